"""What a job card says about a job, as codes with parameters.

Jobs store a code and its parameters (JSON), never a sentence: the card turns them into the
reader's language when it is shown, so a designer who reads Chinese never sees an English
error. A parameter may itself be a message (the reason inside "… Trying again"), or a list of
them, shown one sentence after another. Logs and the admin use the English text.
"""

import json
import re

from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext_lazy, override

CATALOG = {
    # What a queued or running job is doing.
    "generating": _("Generating…"),
    "saving": _("Saving images…"),
    "waiting_for_storage": _("Waiting for storage to come back."),
    "waiting_for_queue": _("Waiting for the queue to come back."),
    "queue_down": _("The job queue can't be reached just now. Your job is saved and starts when the queue is back."),
    "throttled": _("The provider asked us to slow down; waiting our turn."),
    "retrying": _("%(reason)s Trying again…"),
    # What the provider answered (client.ApiError.designer_message).
    "content_rejected": _("The provider's content check rejected this prompt or the image it made. "
                          "Try rewording the prompt."),
    "settings_refused": _("The provider refused these settings: %(detail)s"),
    "provider_quota_used_up": _("The studio's image quota with the provider is used up. "
                                "Please tell your administrator."),
    "account_problem": _("The studio's provider account has a problem (%(code)s). "
                         "Please tell your administrator; nothing was generated."),
    "no_answer_in_time": _("The provider did not answer in time."),
    "provider_busy": _("The provider is busy or having trouble."),
    "request_refused": _("The provider refused the request (%(code)s): %(detail)s"),
    # How a job ended short.
    "model_not_offered": _("The model %(model)s is no longer offered."),
    "studio_fault": _("Something went wrong inside the studio. Please try again; we have logged it."),
    "calls_unanswered": ngettext_lazy(
        "The provider did not answer %(count)d time. It may still have charged for that call, so the "
        "studio stopped rather than risk paying again. Try again later.",
        "The provider did not answer %(count)d times. It may still have charged for those calls, so the "
        "studio stopped rather than risk paying again. Try again later.",
        "count"),
    "busy_for_an_hour": _("The provider stayed too busy for an hour. Please try again later."),
    "retries_used_up": _("%(reason)s The studio tried %(tries)d times; please try again later."),
    "images_came_back": _("%(kept)d of %(n)d images came back."),
    "no_images": _("The provider answered but sent no images. Please try again."),
    "image_problem": _("Image %(number)d: %(problem)s"),
    "image_fault": _("Image %(number)d could not be saved because of a fault inside the studio."),
    # Why an image could not be copied into storage (client.DownloadError).
    "address_not_plain": _("The image's address is not a plain web address."),
    "host_not_allowed": _("The image's address (%(host)s) is not on the allowed list."),
    "address_private": _("The image's address (%(host)s) leads to a private network."),
    "host_not_found": _("The image's host (%(host)s) could not be found."),
    "download_too_slow": _("The image took too long to download."),
    "download_interrupted": _("The image download was interrupted (%(error)s)."),
    "download_failed": _("The image download failed (%(status)d)."),
    "link_expired": _("The image's link had expired before it could be saved."),
    "not_png": _("The provider sent something that is not a PNG image."),
    "impossible_size": _("The provider sent an image of an impossible size (%(width)d×%(height)d)."),
    "too_large": _("The provider sent an image over the size limit."),
    "unreadable": _("The provider sent an image that could not be read."),
    "damaged": _("The provider's file is damaged and could not be read."),
}

# No space after a sentence that ends in full-width punctuation (Chinese runs sentences together).
_FULL_WIDTH_END = re.compile(r"[\u3000-\u303f\uff00-\uffef]$")


class Message:
    """One sentence from CATALOG with its parameters; str() says it in the active language.

    An unknown code (a sentence stored before codes were) is shown as it is.
    """

    __slots__ = ("code", "params")

    def __init__(self, code: str, /, **params):
        self.code = code
        self.params = params

    @classmethod
    def from_json(cls, data: dict) -> "Message":
        params = data.get("params") or {}
        return cls(str(data.get("code", "")), **{key: _load(value) for key, value in params.items()})

    def to_json(self) -> dict:
        return {"code": self.code, "params": {key: _dump(value) for key, value in self.params.items()}}

    def __str__(self) -> str:
        template = CATALOG.get(self.code)
        if template is None:
            return self.code
        values = {key: _text(value) for key, value in self.params.items()}
        return str(template % values) if values else str(template)

    @property
    def english(self) -> str:
        """For logs and operators, whoever reads the card."""
        with override("en"):
            return str(self)

    def __eq__(self, other) -> bool:
        return isinstance(other, Message) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_json(), sort_keys=True))

    def __repr__(self) -> str:
        return f"Message({self.code!r}, {self.params!r})"


def sentences(messages) -> str:
    """Messages one after another, as each language runs sentences together."""
    text = ""
    for each in messages:
        part = str(each).strip()
        if part:
            text += part if not text or _FULL_WIDTH_END.search(text) else " " + part
    return text


def load(data) -> list[Message]:
    """Messages from a JSON column: a list of them (or one)."""
    if isinstance(data, dict):
        data = [data]
    return [Message.from_json(each) for each in data or [] if isinstance(each, dict)]


def dump(messages) -> list[dict]:
    """The JSON for a list of messages, each once, in order."""
    return [message.to_json() for message in dict.fromkeys(messages)]


def _dump(value):
    if isinstance(value, Message):
        return value.to_json()
    if isinstance(value, list | tuple):
        return [_dump(each) for each in value]
    return value


def _load(value):
    if isinstance(value, dict) and "code" in value:
        return Message.from_json(value)
    if isinstance(value, list):
        return [_load(each) for each in value]
    return value


def _text(value):
    if isinstance(value, Message):
        return str(value)
    if isinstance(value, list):
        return sentences(value)
    return value
