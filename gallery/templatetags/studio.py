from urllib.parse import urlencode

from django import template
from django.utils.datastructures import MultiValueDict

register = template.Library()


@register.simple_tag
def link_query(*mappings, **params) -> str:
    """A query string of exactly these mappings and parameters (later ones win, None drops a key), or nothing
    when there are none, to follow a {% url %}: {% querystring %} starts from the page's own query, which a
    link elsewhere must not carry. Gallery tiles call it a few times each, so it skips QueryDict."""
    merged = {}
    # A mapping the context lacks resolves to "": a partial rendered on its own has no page query to keep.
    for mapping in (mapping for mapping in (*mappings, params) if mapping):
        for key, value in mapping.lists() if isinstance(mapping, MultiValueDict) else mapping.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
    return f"?{urlencode(merged, doseq=True)}" if merged else ""


@register.filter
def can_cancel(job, user) -> bool:
    """Generation.can_cancel for the signed-in user: a template can't pass the argument."""
    return job.can_cancel(user)
