"""apisim: a standalone HTTP simulator of the image-generation API described in the studio's API contract (shared/API.md)."""

from .server import Config, make_server

__all__ = ["Config", "make_server"]
