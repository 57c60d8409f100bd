"""The web page (issue 13): built by `make web` from web/ into static/, committed, served by corrald at /."""

from __future__ import annotations

from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC = Path(__file__).resolve().parent / "static"


class _Page(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        if scope["method"] not in ("GET", "HEAD"):  # a POST to no route is a 404 (no such API route), as before
            raise HTTPException(status_code=404)
        return await super().get_response(path, scope)


def static_files() -> StaticFiles:
    """The page at / (index.html) and its /assets; API routes, added before, take precedence."""
    return _Page(directory=STATIC, html=True, check_dir=False)
