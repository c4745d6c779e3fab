import re
import secrets
from datetime import date
from pathlib import Path
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib.humanize.templatetags.humanize import intcomma
from django.db import transaction
from django.forms.renderers import DjangoTemplates as DjangoTemplatesRenderer
from django.http import QueryDict
from django.urls import reverse_lazy
from django.utils.functional import cached_property
from django.utils.timesince import timeuntil
from django.utils.translation import gettext_lazy as _

from gallery import quotas
from gallery.browse import Cursor
from gallery.catalog import MAX_IMAGES, MAX_SEED, NEGATIVE_PROMPT_MAX, Size, catalog, default_model, get_model
from gallery.models import Collection, Generation, Image, ShareLink
from gallery.tasks import enqueue

CUSTOM = "custom"
# Control characters (but tab and newlines) and the bidirectional overrides and isolates that
# can make stored text read differently from what it is.
INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# Gallery dates stay where every time zone's midnight is still a valid datetime.
EARLIEST_DATE, LATEST_DATE = date(1900, 1, 1), date(9998, 12, 31)
DATE_RANGE_ERROR = _("Choose a date between 1900 and 9998.")
MAX_SELECTION = 500
# A field inside its own label, for a row of filters.
INLINE_FIELD = "django/forms/inline_field.html"


class FormRenderer(DjangoTemplatesRenderer):
    """Django's form renderer with the project's template folders in front of its own templates, so that
    templates/django/forms/ shapes every field group (field.html) without a settings change."""

    @cached_property
    def engine(self):
        builtin = Path(forms.__file__).parent / "templates"
        return self.backend({"APP_DIRS": True, "DIRS": [*settings.TEMPLATES[0]["DIRS"], builtin],
                             "NAME": "studioforms", "OPTIONS": {}})


class StudioForm(forms.Form):
    """A form shown on the studio's pages: its fields render through templates/django/forms/."""

    default_renderer = FormRenderer()


def plain_text(text: str) -> str:
    """text without control or bidirectional-override characters."""
    return INVISIBLE.sub("", text)


class PlainTextField(forms.CharField):
    """A CharField that drops control and bidi-override characters before it stores anything."""

    def to_python(self, value):
        value = super().to_python(value)
        return plain_text(value).strip() if self.strip else plain_text(value)


class GalleryDateField(forms.DateField):
    def __init__(self, **kwargs):
        super().__init__(required=False, widget=forms.DateInput(attrs={"type": "date"}), **kwargs)

    def validate(self, value):
        super().validate(value)
        if value and not EARLIEST_DATE <= value <= LATEST_DATE:
            raise forms.ValidationError(DATE_RANGE_ERROR, code="out_of_range")


def model_choices() -> list[tuple[str, str]]:
    return [(spec.name, _("%(label)s · recommended") % {"label": spec.label} if spec.recommended else spec.label)
            for spec in catalog().values()]


def size_choices(model_name: str | None) -> list[tuple[str, str]]:
    spec = get_model(model_name or "") or default_model()
    presets = [(str(size), f"{size.width} × {size.height}  ({size.aspect_label})") for size in spec.presets]
    return [*presets, (CUSTOM, _("Custom…"))]


class GenerateForm(StudioForm):
    prompt = PlainTextField(
        label=_("Prompt"), strip=True, template_name="django/forms/counted_field.html",
        widget=forms.Textarea(attrs={"rows": 5, "placeholder": _("一只小猫在草地上奔跑，电影感，自然光影"),
                                     "autofocus": True}),
        error_messages={"required": _("Write a prompt: it tells the model what to make.")},
    )
    negative_prompt = PlainTextField(
        label=_("Negative prompt"), required=False, strip=True, template_name="django/forms/counted_field.html",
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": _("blurry, low quality")}),
    )
    # Choosing a model swaps in the size field of its presets and rule.
    model = forms.ChoiceField(label=_("Model"), choices=model_choices, widget=forms.Select(attrs={
        "hx-get": reverse_lazy("gallery-size-field"), "hx-trigger": "change", "hx-target": "#size-field",
        "hx-swap": "outerHTML"}))
    # Any W*H is accepted here and judged by the chosen model's rule in clean().
    size = forms.CharField(label=_("Size"), widget=forms.Select, template_name="django/forms/size_field.html")
    width = forms.IntegerField(label=_("Width"), required=False, min_value=1, max_value=10000,
                               widget=forms.NumberInput(attrs={"inputmode": "numeric"}))
    height = forms.IntegerField(label=_("Height"), required=False, min_value=1, max_value=10000,
                                widget=forms.NumberInput(attrs={"inputmode": "numeric"}))
    n = forms.IntegerField(
        label=_("Number of images"), initial=1, min_value=1, max_value=MAX_IMAGES,
        widget=forms.NumberInput(attrs={"inputmode": "numeric"}),
        error_messages={"min_value": _("Ask for 1 to 4 images."), "max_value": _("Ask for 1 to 4 images."),
                        "required": _("Ask for 1 to 4 images."), "invalid": _("Ask for 1 to 4 images.")},
    )
    seed = forms.IntegerField(
        label=_("Seed"), required=False, min_value=0, max_value=MAX_SEED,
        widget=forms.NumberInput(attrs={"inputmode": "numeric", "placeholder": _("Random")}),
        help_text=_("Leave empty for a random seed; the studio records the one it used."),
        error_messages={"min_value": _("A seed is a whole number from 0 to 2147483647."),
                        "max_value": _("A seed is a whole number from 0 to 2147483647."),
                        "invalid": _("A seed is a whole number from 0 to 2147483647.")},
    )
    prompt_extend = forms.BooleanField(
        label=_("Prompt extend"), required=False, initial=True,
        help_text=_("Let the provider enrich the prompt; its version is shown beside yours."),
    )
    watermark = forms.BooleanField(label=_("Watermark"), required=False, initial=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        model_name = self.data.get("model") if self.is_bound else self.initial.get("model")
        self.spec = get_model(model_name or "") or default_model()
        self.fields["size"].widget.choices = size_choices(self.spec.name)
        self.fields["size"].help_text = self.spec.size_hint()
        self.fields["prompt"].widget.attrs["data-limit"] = self.spec.prompt_max
        self.fields["negative_prompt"].widget.attrs["data-limit"] = NEGATIVE_PROMPT_MAX
        if not self.is_bound:
            self.initial.setdefault("model", self.spec.name)
            self.initial.setdefault("size", str(self.spec.default_size))

    def clean_negative_prompt(self) -> str:
        text = self.cleaned_data["negative_prompt"]
        if len(text) > NEGATIVE_PROMPT_MAX:
            raise forms.ValidationError(
                _("The negative prompt is %(length)d characters; the limit is %(limit)d."),
                params={"length": len(text), "limit": NEGATIVE_PROMPT_MAX})
        return text

    def clean(self):
        cleaned = super().clean()
        spec = get_model(cleaned.get("model") or "")
        if spec is None:
            return cleaned
        prompt = cleaned.get("prompt") or ""
        if len(prompt) > spec.prompt_max:
            self.add_error("prompt", _("The prompt is %(length)d characters; %(model)s takes at most %(limit)d.")
                           % {"length": len(prompt), "model": spec.label, "limit": spec.prompt_max})
        if cleaned.get("size") == CUSTOM:
            width, height = cleaned.get("width"), cleaned.get("height")
            if not width or not height:
                self.add_error("size", _("Give both a width and a height for a custom size."))
                return cleaned
            size = Size(width, height)
        elif cleaned.get("size"):
            try:
                size = Size.parse(cleaned["size"])
            except ValueError:
                self.add_error("size", _("Choose a size from the list, or Custom with a width and height."))
                return cleaned
        else:
            return cleaned
        if error := spec.size_error(size):
            self.add_error("size", error)
        cleaned["size_value"] = size
        return cleaned

    def queue(self, owner) -> Generation | None:
        """Queue the job if the designer's quota has room for it; otherwise say why on the form."""
        images = self.cleaned_data["n"]
        with transaction.atomic():
            standing = quotas.reserve(owner)
            if not standing.allows(images):
                self.add_error(None, _(
                    "That would go past your quota: %(used)s of your %(limit)s images today are used or on "
                    "their way, and this asks for %(n)d. Your quota resets at midnight, in %(wait)s."
                ) % {"used": intcomma(standing.used), "limit": intcomma(standing.limit), "n": images,
                     "wait": timeuntil(standing.resets_at, depth=2)})
                return None
            generation = self.create_generation(owner)
            transaction.on_commit(lambda: enqueue(generation.pk))
        return generation

    def create_generation(self, owner) -> Generation:
        data = self.cleaned_data
        seed = data["seed"] if data.get("seed") is not None else secrets.randbelow(MAX_SEED + 1)
        return Generation.objects.create(
            owner=owner, prompt=data["prompt"], negative_prompt=data["negative_prompt"], model=data["model"],
            width=data["size_value"].width, height=data["size_value"].height, n=data["n"], seed=seed,
            prompt_extend=data["prompt_extend"], watermark=data["watermark"],
        )


class GalleryFilterForm(StudioForm):
    """The gallery's search box and filters; every field lives in the URL."""

    q = forms.CharField(label=_("Search"), required=False, max_length=200, widget=forms.SearchInput(attrs={
        "aria-label": _("Search"), "placeholder": _("Search prompts: 草地, kittens, 青花瓷 teacup…"),
        "autocomplete": "off"}))
    sort = forms.ChoiceField(label=_("Sort"), required=False, template_name=INLINE_FIELD,
                             choices=[("relevance", _("Most relevant")), ("newest", _("Newest"))])
    model = forms.ChoiceField(label=_("Model"), required=False, template_name=INLINE_FIELD)
    shape = forms.ChoiceField(label=_("Shape"), required=False, template_name=INLINE_FIELD)
    mine = forms.BooleanField(label=_("Only mine"), required=False, template_name=INLINE_FIELD)
    favourites = forms.BooleanField(label=_("Favourites"), required=False, template_name=INLINE_FIELD)
    since = GalleryDateField(label=_("From"), template_name=INLINE_FIELD)
    until = GalleryDateField(label=_("To"), template_name=INLINE_FIELD)
    cursor = forms.CharField(label=_("Page"), required=False, max_length=200, widget=forms.HiddenInput)
    collection = forms.ModelChoiceField(
        label=_("Collection"), required=False, queryset=Collection.objects.all(), widget=forms.HiddenInput,
        error_messages={"invalid_choice": _("There is no such collection.")},
    )
    FILTERS = ("sort", "model", "shape", "since", "until", "mine", "favourites")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = [("", _("All models")), *[(s.name, s.label) for s in catalog().values()]]
        self.fields["shape"].choices = [("", _("Any shape")), *Image.Shape.choices]

    @property
    def filter_fields(self):
        """The filters the row under the search box shows, each inside its label."""
        return [self[name] for name in self.FILTERS]

    @property
    def filter_state(self) -> str:
        """All that the filter row's HTML depends on but the language: each filter as sent, and which were
        refused. gallery.html caches the row under it, since the row's widgets take a sixth of a page's time."""
        sent = [(name, self.data.get(name, "")) for name in self.FILTERS]
        return urlencode([*sent, ("refused", ",".join(name for name in self.FILTERS if name in self.errors))])

    def link_params(self) -> QueryDict:
        """The search and filters as sent, less the page cursor and empty fields: what a link back to these
        results, or on to an image among them, carries."""
        params = QueryDict(mutable=True)
        for name in self.fields:
            if name != "cursor" and self.data.get(name):
                params[name] = self.data[name]
        return params

    def clean(self):
        cleaned = super().clean()
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since > until:
            self.add_error("until", _("The end date is before the start date."))
        return cleaned

    def clean_cursor(self) -> Cursor | None:
        token = self.cleaned_data["cursor"]
        if not token:
            return None
        cursor = Cursor.decode(token)
        if cursor is None:
            raise forms.ValidationError(_("This page link is broken; start again from the first page."))
        return cursor


class ReuseForm(forms.Form):
    """?reuse=<image id>&with=prompt|seed|revised, or ?again=<generation id>, on the generate page."""

    reuse = forms.IntegerField(required=False, min_value=1, max_value=2**63 - 1)
    again = forms.UUIDField(required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # "with" reads well in a link but is a Python keyword, so the field is added by name.
        self.fields["with"] = forms.ChoiceField(
            required=False, choices=[("prompt", "prompt"), ("seed", "seed"), ("revised", "revised")])


class CollectionForm(StudioForm):
    name = PlainTextField(
        label=_("Name"), label_suffix="", max_length=120,
        widget=forms.TextInput(attrs={"autocomplete": "off", "placeholder": _("e.g. Spring campaign")}),
        error_messages={"required": _("Give the collection a name."),
                        "max_length": _("A name is at most %(limit_value)d characters.")},
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.is_bound and self.errors:
            self.focus()

    def focus(self) -> None:
        """The cursor goes to the name: where it was sent back wrong, or where naming is the first thing to do."""
        self.fields["name"].widget.attrs["autofocus"] = True


class CollectionSearchForm(StudioForm):
    """The collections page's search box and its Only mine switch."""

    q = PlainTextField(label=_("Search collections"), required=False, max_length=200, widget=forms.SearchInput(
        attrs={"aria-label": _("Search collections"), "placeholder": _("Search collections by name"),
               "autocomplete": "off"}))
    mine = forms.BooleanField(label=_("Only mine"), required=False, template_name=INLINE_FIELD)


class ImageSelectionForm(forms.Form):
    """Images picked in the gallery or on a collection page, as `images` ids."""

    images = forms.ModelMultipleChoiceField(
        queryset=Image.objects.only("id"),
        error_messages={"required": _("Select at least one image."),
                        "invalid_choice": _("One of the selected images no longer exists."),
                        "invalid_pk_value": _("That selection is not a list of images.")},
    )

    def clean_images(self):
        images = self.cleaned_data["images"]
        if len(images) > MAX_SELECTION:
            raise forms.ValidationError(_("Select at most %(limit)d images at once."), params={"limit": MAX_SELECTION})
        return images


class MoveForm(forms.Form):
    image = forms.IntegerField(min_value=1, max_value=2**63 - 1)
    direction = forms.ChoiceField(choices=[("earlier", _("Move earlier")), ("later", _("Move later"))])


class OrderForm(forms.Form):
    """The new order of a collection after a drag: image ids, comma-separated."""

    order = forms.CharField(max_length=20_000)

    def clean_order(self) -> list[int]:
        parts = [part.strip() for part in self.cleaned_data["order"].split(",") if part.strip()]
        if not parts or not all(re.fullmatch(r"[0-9]{1,18}", part) for part in parts):
            raise forms.ValidationError(_("That order is not a list of images."))
        ids = [int(part) for part in parts]
        if any(not 0 < pk < 2**63 for pk in ids):
            raise forms.ValidationError(_("That order is not a list of images."))
        return ids


class ShareForm(StudioForm):
    expiry = forms.ChoiceField(label=_("Expires"), choices=ShareLink.Expiry.choices,
                               initial=ShareLink.Expiry.WEEK)
    show_parameters = forms.BooleanField(
        label=_("Show prompt and parameters"), required=False, initial=False,
        help_text=_("Off: the prompt, seed and model stay in the studio, in the page and in downloads."))
    allow_downloads = forms.BooleanField(label=_("Allow downloads"), required=False, initial=True,
                                         help_text=_("Lets people save the original PNG files."))


MAX_DAILY_IMAGES = 100_000
QUOTA_ERROR = _("A daily quota is a whole number of images from 0 to 100000, or empty for the studio default.")
MONTH_ERROR = _("Choose a month between 1900-01 and 9998-12, written as YYYY-MM.")


class QuotaForm(StudioForm):
    """A designer's own daily quota, set by staff on the Team page; empty puts them back on the studio default."""

    daily_images = forms.IntegerField(
        label=_("Images a day"), required=False, min_value=0, max_value=MAX_DAILY_IMAGES,
        widget=forms.NumberInput(attrs={"inputmode": "numeric", "placeholder": _("Default")}),
        error_messages={key: QUOTA_ERROR for key in ("invalid", "min_value", "max_value")},
    )


class UsageFilterForm(StudioForm):
    """The Usage page's month, as ?month=YYYY-MM; without one, the current month."""

    month = forms.CharField(
        label=_("Month"), required=False, max_length=7,
        # Required in the browser: an emptied picker would otherwise send the page back to this month.
        widget=forms.TextInput(attrs={"type": "month", "min": f"{EARLIEST_DATE:%Y-%m}", "required": True}),
        error_messages={"max_length": MONTH_ERROR, "null_characters_not_allowed": MONTH_ERROR},
    )

    def __init__(self, params, *, today: date, **kwargs):
        """params: the page's query; a month left out is the current one, so that the picker shows it."""
        super().__init__({"month": params.get("month") or f"{today:%Y-%m}"}, **kwargs)
        self.fields["month"].widget.attrs["max"] = f"{today:%Y-%m}"

    def clean_month(self) -> date | None:
        value = self.cleaned_data["month"]
        if not value:
            return None
        # [0-9], not \d: int() would take other scripts' digits too.
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}", value):
            raise forms.ValidationError(MONTH_ERROR, code="invalid")
        year, month = int(value[:4]), int(value[5:])
        if not 1 <= month <= 12 or not EARLIEST_DATE.year <= year <= LATEST_DATE.year:
            raise forms.ValidationError(MONTH_ERROR, code="out_of_range")
        return date(year, month, 1)
