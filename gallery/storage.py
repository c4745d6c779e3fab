"""Where images live. The only module that knows whether that is S3 or a folder.

Keys are deterministic (`generations/<uuid>/<index>.png`), so writing one twice
overwrites rather than duplicates: a repeated task is harmless.
"""

import functools
from collections.abc import Iterator

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, Storage, default_storage, storages
from django.http import FileResponse, HttpResponse, HttpResponseRedirect
from storages.utils import clean_name

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
    """Store `data` at `key`, replacing what was there.

    On S3 it is one PutObject with the storage's write parameters: `Storage.save` would go through
    boto3's managed transfer, whose threads and bookkeeping cost a few milliseconds per file, and the
    worker stores three files per image.
    """
    content = ContentFile(data)
    content.content_type = CONTENT_TYPES.get(key[key.rfind("."):], "application/octet-stream")
    try:
        if _is_local():
            saved = default_storage.save(key, content)
        else:
            name = default_storage._normalize_name(clean_name(key))
            default_storage.bucket.put_object(Key=name, Body=data,
                                              **default_storage._get_write_parameters(name, content))
            saved = key
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


def _for_browsers() -> Storage:
    """The storage that makes URLs for browsers: signed for AWS_S3_PUBLIC_URL when that is set.

    Web and workers reach S3 at an internal address, and SigV4 signs the Host header, so a URL signed
    for that address can't be rewritten to the public one afterwards: it is signed for the public one.
    """
    if _is_local() or not settings.AWS_S3_PUBLIC_URL:
        return default_storage
    return _signing_copy(storages["default"], settings.AWS_S3_PUBLIC_URL)


@functools.lru_cache(maxsize=4)
def _signing_copy(storage: Storage, endpoint_url: str) -> Storage:
    """The same storage, options and keys aimed at another address; signing a URL makes no request.

    Kept, since a new copy builds its boto3 session again, and a gallery page asks for dozens of URLs.
    """
    _, args, options = storage.deconstruct()
    return storage.__class__(*args, **(options | {"endpoint_url": endpoint_url}))


def serve(key: str, *, expires: int | None = None) -> HttpResponse:
    """A response that gets the browser the file: a short-lived signed URL, or the bytes.

    With `expires` (a share link's routes) the signed URL lives that many seconds and nothing may
    be cached, so that revoking the link ends access at once.
    """
    if _is_local():
        response = FileResponse(default_storage.open(key, "rb"), content_type=CONTENT_TYPES.get(key[key.rfind("."):]))
        response["Cache-Control"] = "no-store" if expires else "private, max-age=86400, immutable"
        return response
    response = HttpResponseRedirect(_for_browsers().url(key, expire=expires))
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
