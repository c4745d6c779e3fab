"""Job cards say what they say as message codes (gallery/messages.py), translated when shown.

The fixed English sentences of earlier jobs become their codes; sentences with numbers or the
provider's words in them stay as they were, and the card shows them as they are.
"""

from django.db import migrations, models

# The sentences the studio wrote before, word for word, and their codes.
STATUS_DETAILS = {
    "Generating…": "generating",
    "Saving images…": "saving",
    "Waiting for storage to come back.": "waiting_for_storage",
    "Waiting for the queue to come back.": "waiting_for_queue",
    "The provider asked us to slow down; waiting our turn.": "throttled",
    "The job queue can't be reached just now. Your job is saved and starts when the queue is back.": "queue_down",
}
ERROR_MESSAGES = {
    "The provider's content check rejected this prompt or the image it made. Try rewording the prompt.":
        "content_rejected",
    "The studio's image quota with the provider is used up. Please tell your administrator.":
        "provider_quota_used_up",
    "The provider did not answer in time.": "no_answer_in_time",
    "Something went wrong inside the studio. Please try again; we have logged it.": "studio_fault",
    "The provider stayed too busy for an hour. Please try again later.": "busy_for_an_hour",
    "The provider answered but sent no images. Please try again.": "no_images",
}


def to_codes(apps, schema_editor):
    Generation = apps.get_model("gallery", "Generation")
    for text, code in STATUS_DETAILS.items():
        Generation.objects.filter(status_detail=text).update(detail_code=code, detail_params={}, status_detail="")
    for text, code in ERROR_MESSAGES.items():
        Generation.objects.filter(error_message=text, error_notes=[]).update(
            error_notes=[{"code": code, "params": {}}], error_message="")


def to_sentences(apps, schema_editor):
    # The columns are dropped next, in this transaction: no row update may leave a check pending.
    schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    Generation = apps.get_model("gallery", "Generation")
    for text, code in STATUS_DETAILS.items():
        Generation.objects.filter(detail_code=code).update(status_detail=text)
    for text, code in ERROR_MESSAGES.items():
        Generation.objects.filter(error_notes=[{"code": code, "params": {}}]).update(error_message=text)


class Migration(migrations.Migration):

    dependencies = [
        ('gallery', '0004_fair_queue'),
    ]

    operations = [
        migrations.AddField(
            model_name='generation',
            name='detail_code',
            field=models.CharField(blank=True, db_default='', default='', max_length=64),
        ),
        migrations.AddField(
            model_name='generation',
            name='detail_params',
            field=models.JSONField(blank=True, db_default={}, default=dict),
        ),
        migrations.AddField(
            model_name='generation',
            name='error_notes',
            field=models.JSONField(blank=True, db_default=[], default=list),
        ),
        migrations.RunPython(to_codes, to_sentences, elidable=True),
    ]
