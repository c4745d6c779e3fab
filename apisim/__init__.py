"""apisim: a standalone HTTP simulator of the image-generation API in the studio's shared/API.md."""

from .server import Config, make_server

__all__ = ["Config", "make_server"]
