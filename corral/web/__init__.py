"""The web page (issue 13): built by `make web` from web/ into static/, committed, served by corrald at /."""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from starlette.routing import Match, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC = Path(__file__).resolve().parent / "static"


class PageMount(Mount):
    """The static files at /, for GET and HEAD outside /v1 only: to the API's router the mount is not there, so a
    wrong method on a route is still a 405 and a path that is no route still the API's own 404 (one-line JSON)."""

    def matches(self, scope: Scope) -> tuple[Match, MutableMapping[str, Any]]:
        path = scope.get("path", "")
        if (scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD")
                or path == "/v1" or path.startswith("/v1/")):
            return Match.NONE, {}
        return super().matches(scope)


def page() -> PageMount:
    """The page at / (index.html) and its /assets. Goes after every route of the app."""
    return PageMount("/", app=StaticFiles(directory=STATIC, html=True, check_dir=False), name="web")
