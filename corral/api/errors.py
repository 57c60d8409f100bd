"""Domain errors to HTTP statuses, in one table; the body carries the one-line message."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral import errors as e
from corral.auth import errors as auth_errors

STATUS: list[tuple[type[e.CorralError], int]] = [
    (auth_errors.Unauthorized, 401),
    (auth_errors.Forbidden, 403),
    (auth_errors.TooManyAttempts, 429),
    (e.InvalidInput, 422),
    (e.NotFound, 404),
    (e.StateError, 409),
    (e.Conflict, 409),
    (e.CapacityError, 409),
    (e.EngineError, 502),
    (e.ImageError, 500),
    (e.CorralError, 500),
]


def status_for(exc: e.CorralError) -> int:
    return next(code for cls, code in STATUS if isinstance(exc, cls))


def validation_message(exc: RequestValidationError) -> str:
    """The first problem pydantic found, as one line: 'memory: Input should be ...'."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body",))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return e.one_line("; ".join(parts)) or "invalid request"


def http_error(method: str, path: str, status: int, detail: object) -> tuple[str, str]:
    """(error, message) for an error FastAPI or Starlette raised themselves, in Corral's terms: a body that is not
    JSON, a route that does not exist, a method a route does not take."""
    if status == 400 and detail == "There was an error parsing the body":
        return "InvalidInput", "the request body is not valid JSON: send a JSON object (Content-Type: application/json)"
    if status == 404:
        return "NotFound", e.one_line(f"no API route {path}: see /openapi.json for the routes")
    if status == 405:
        return "InvalidInput", e.one_line(f"{method} is not allowed on {path}: see /openapi.json for its methods")
    return ("InvalidInput" if 400 <= status < 500 else "HTTPError"), e.one_line(str(detail))


def install(app: FastAPI) -> None:
    @app.exception_handler(e.CorralError)
    async def _corral(_: Request, exc: e.CorralError) -> JSONResponse:
        return JSONResponse({"error": type(exc).__name__, "message": exc.message}, status_code=status_for(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error, message = http_error(request.method, request.url.path, exc.status_code, exc.detail)
        return JSONResponse({"error": error, "message": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "InvalidInput", "message": validation_message(exc)}, status_code=422)
