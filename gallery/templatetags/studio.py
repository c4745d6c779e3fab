from django import template

register = template.Library()


@register.filter
def highlight(text: str, query):
    """text with the words the gallery search matched marked."""
    return query.highlight(text or "")


@register.filter
def in_set(value, collection) -> bool:
    return value in collection
