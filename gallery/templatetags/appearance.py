"""How pages look: a tile's shape as CSS classes (the CSP allows no style attributes) and the chosen theme."""

import math

from django import template

from gallery.views.preferences import chosen_theme

register = template.Library()

# Shapes run from 1:4 to 4:1 in steps of 2 %, so a tile is never more than 1 % off its image's shape.
NARROWEST, STEP, STEPS = 0.25, 1.02, 140


@register.filter
def aspect(image) -> str:
    """Classes for the shape width/height: step n of 0..140 as "ar-t{n // 10} ar-u{n % 10}", which studio.css
    multiplies back into --ar, 25 rules instead of 141."""
    if not image.width or not image.height:
        return ""
    ratio = min(max(image.width / image.height, NARROWEST), 1 / NARROWEST)
    step = min(max(round(math.log(ratio / NARROWEST, STEP)), 0), STEPS)
    return f"ar-t{step // 10} ar-u{step % 10}"


@register.simple_tag(takes_context=True)
def theme(context) -> str:
    """The theme the visitor chose ("light", "dark" or "system"), for the first paint."""
    request = context.get("request")
    return chosen_theme(request) if request is not None else "system"
