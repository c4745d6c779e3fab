"""Where images live. The only module that knows whether that is S3 or a folder.

Keys are deterministic (`generations/<uuid>/<index>.png`), so writing one twice
overwrites rather than duplicates: a repeated task is harmless.
"""

from collections.abc import Iterator

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, default_storage
from django.http import FileResponse, HttpResponse, HttpResponseRedirect

CONTENT_TYPES = {".png": "image/png", ".webp": "image/webp"}


class StorageError(Exception):
    """Storage could not be reached or refused a write; worth retrying later."""


def original_key(generation_id, index: int) -> str:
    return f"generations/{generation_id}/{index}.png"


def rendition_key(generation_id, index: int, spec: str) -> str:
    return f"generations/{generation_id}/{index}.{spec}.webp"


def _is_local() -> bool:
    return isinstance(default_storage, FileSystemStorage)


def put(key: str, data: bytes) -> None:
    content = ContentFile(data)
    content.content_type = CONTENT_TYPES.get(key[key.rfind("."):], "application/octet-stream")
    try:
        saved = default_storage.save(key, content)
    except Exception as error:  # botocore, OSError: all mean "not stored, try again"
        raise StorageError(f"could not store {key}: {type(error).__name__}") from error
    if saved != key:
        raise StorageError(f"storage renamed {key} to {saved}")


def read(key: str) -> bytes:
    with default_storage.open(key, "rb") as handle:
        return handle.read()


def exists(key: str) -> bool:
    return default_storage.exists(key)


def delete(keys: list[str]) -> None:
    try:
        for key in keys:
            default_storage.delete(key)
    except Exception as error:  # botocore, OSError: all mean "not deleted, try again"
        raise StorageError(f"could not delete {key}: {type(error).__name__}") from error


def serve(key: str, *, expires: int | None = None) -> HttpResponse:
    """A response that gets the browser the file: a short-lived signed URL, or the bytes.

    With `expires` (a share link's routes) the signed URL lives that many seconds and nothing may
    be cached, so that revoking the link ends access at once.
    """
    if _is_local():
        response = FileResponse(default_storage.open(key, "rb"), content_type=CONTENT_TYPES.get(key[key.rfind("."):]))
        response["Cache-Control"] = "no-store" if expires else "private, max-age=86400, immutable"
        return response
    response = HttpResponseRedirect(default_storage.url(key, expire=expires))
    # The signed URL stays valid longer than this, so the browser may reuse the redirect.
    response["Cache-Control"] = ("no-store" if expires
                                 else f"private, max-age={max(settings.AWS_QUERYSTRING_EXPIRE // 2, 30)}")
    return response


CHUNK = 256 * 1024


def chunks(key: str) -> Iterator[bytes]:
    """The file's bytes a piece at a time, never the whole file in memory or on disk.

    Storage is reached at the first piece; a missing file or an outage raises StorageError there.
    """
    try:
        if _is_local():
            handle = default_storage.open(key, "rb")
        else:
            handle = default_storage.bucket.Object(default_storage._normalize_name(key)).get()["Body"]
    except Exception as error:  # OSError, botocore: the file can't be read now
        raise StorageError(f"could not read {key}: {type(error).__name__}") from error
    with handle:
        yield from iter(lambda: handle.read(CHUNK), b"")
