"""Search vectors with positions for Chinese and English word pairs, and an index for each tier of a
search by relevance.

Chinese lexemes were stored without positions, and a tsvector's weights live on its positions, so
every stored vector is built again (gallery.search.document_sql, a thousand rows per statement)
while the GIN index is away; then it and the indexes of the prompt's, and the prompt's and revised
prompt's, lexemes (ts_filter by weight) are built.

studio_bigrams makes a lexeme of every two English stems that stand side by side ('golden hour'),
and studio_phrase the query that asks for all of a text's, so that an index finds a phrase without
reading rows to check positions.
"""

from django.contrib.postgres.indexes import GinIndex
from django.db import migrations

import gallery.models
from gallery import search

BATCH = 1000


def quoted(lexeme: str) -> str:
    """SQL that writes a lexeme as tsvector's and tsquery's text forms quote it: in '…', with ' doubled
    and \\ escaped."""
    return rf"'''' || replace(replace({lexeme}, '\', '\\'), '''', '''''') || ''''"


FUNCTIONS = f"""
CREATE FUNCTION studio_bigrams(v tsvector) RETURNS tsvector LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  SELECT coalesce(string_agg({quoted("a.lexeme || ' ' || b.lexeme")} || ':' || a.pos, ' '), '')::tsvector
  FROM (SELECT lexeme, unnest(positions) AS pos FROM unnest(v)) a
  JOIN (SELECT lexeme, unnest(positions) AS pos FROM unnest(v)) b ON b.pos = a.pos + 1
$$;
-- NULL rather than an empty query for a text without two words side by side: an empty tsquery
-- matches nothing, but PostgreSQL sends a notice for every row it is tried on.
CREATE FUNCTION studio_phrase(q text) RETURNS tsquery LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  SELECT nullif(string_agg({quoted("lexeme")}, ' & '), '')::tsquery
  FROM unnest(studio_bigrams(to_tsvector('english', q)))
$$;
"""


def rebuild_vectors(apps, schema_editor):
    Image = apps.get_model("gallery", "Image")
    rows = (Image.objects.order_by("pk")
            .values_list("pk", "generation__prompt", "revised_prompt", "generation__negative_prompt"))
    columns = ("v.prompt_latin", "v.prompt_cjk"), ("v.revised_latin", "v.revised_cjk"), \
        ("v.negative_latin", "v.negative_cjk")
    last = 0
    with schema_editor.connection.cursor() as cursor:
        while batch := list(rows.filter(pk__gt=last)[:BATCH]):
            values, params = [], []
            for pk, *texts in batch:
                values.append("(%s" + ", %s" * 6 + ")")
                params.append(pk)
                for text in texts:
                    params += [search.latin_text(text), search.cjk_vector(text)]
            cursor.execute(
                f"UPDATE gallery_image SET search = {search.document_sql(*columns)} "
                f"FROM (VALUES {', '.join(values)}) AS v(id, prompt_latin, prompt_cjk, revised_latin, revised_cjk, "
                "negative_latin, negative_cjk) WHERE gallery_image.id = v.id",
                params,
            )
            last = batch[-1][0]


class Migration(migrations.Migration):
    dependencies = [("gallery", "0005_message_codes")]

    operations = [
        migrations.RunSQL(FUNCTIONS, "DROP FUNCTION studio_phrase(text); DROP FUNCTION studio_bigrams(tsvector);"),
        migrations.RemoveIndex(model_name="image", name="image_search"),
        migrations.RunPython(rebuild_vectors, migrations.RunPython.noop, elidable=True),
        migrations.AddIndex(model_name="image", index=GinIndex(fields=["search"], name="image_search")),
        migrations.AddIndex(model_name="image",
                            index=GinIndex(gallery.models.TsFilter("{a}"), name="image_search_prompt")),
        migrations.AddIndex(model_name="image",
                            index=GinIndex(gallery.models.TsFilter("{a,b}"), name="image_search_main")),
    ]
