"""CollectionItem.image_created: a copy of its image's `created`, and the index that pages a collection's
images newest first from this table alone."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("gallery", "0006_ranked_search")]

    operations = [
        migrations.AddField(model_name="collectionitem", name="image_created", field=models.DateTimeField(null=True)),
        migrations.RunSQL(
            "UPDATE gallery_collectionitem SET image_created = gallery_image.created FROM gallery_image "
            "WHERE gallery_image.id = gallery_collectionitem.image_id",
            migrations.RunSQL.noop, elidable=True),
        migrations.AlterField(model_name="collectionitem", name="image_created", field=models.DateTimeField()),
        migrations.AddIndex(
            model_name="collectionitem",
            index=models.Index(models.F("collection"), models.F("image_created").desc(), models.F("image").desc(),
                               name="collection_item_newest"),
        ),
    ]
