"""Bad input the API fuzzer (tests/faults/test_api_fuzz.py) found answered with a 500: each must be refused with
a one-line message naming what is wrong, as a 4xx, before anything changes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from corral.api.app import create_app
from corral.api.errors import status_for
from corral.api.models import IdlePolicy, QuotaSet
from corral.backup.service import given_repo_path
from corral.errors import InvalidInput, NotFound


async def request(method: str, url: str, **kw: Any) -> httpx.Response:
    """A request to the app without a daemon: for what is refused before any service is reached."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app()), base_url="http://corral") as c:
        return await c.request(method, url, **kw)


@pytest.mark.parametrize("value", [[{}], {"a": 1}, [60]])
def test_idle_suspend_after_of_the_wrong_type_is_refused(value: object) -> None:
    # was: TypeError from float(list) inside the validator, which pydantic does not turn into a 422
    with pytest.raises(ValidationError, match="is not a duration: use e.g. 30m or 1h, or off"):
        IdlePolicy.model_validate({"suspend_after": value})


def test_quota_past_what_the_store_holds_is_refused() -> None:
    # was: OverflowError from SQLite ("Python int too large to convert to SQLite INTEGER") as a 500
    with pytest.raises(ValidationError, match="less than or equal to 9223372036854775807"):
        QuotaSet.model_validate({"memory": 2**64})
    assert QuotaSet.model_validate({"disk": 2**63 - 1}).disk == 2**63 - 1


@pytest.mark.parametrize(("raw", "words"), [
    ("backups", "is not absolute: give the whole path"),  # was: a repository made in the daemon's working directory
    ("~x", "is not absolute"),  # was: RuntimeError from expanduser() in a daemon without a home directory, a 500
    ("/b\0", "contains a NUL byte"),
])
def test_backup_repository_paths_are_absolute(raw: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=words) as exc:
        given_repo_path(raw)
    assert status_for(exc.value) == 422 and "\n" not in exc.value.message
    assert given_repo_path("/srv/b/") == Path("/srv/b")


@pytest.mark.parametrize("url", ["/v1/events?after=18446744073709551616", "/v1/vms/web/events?after=2e70",
                                 "/v1/vms/web/events?after=99999999999999999999", "/v1/vms/web/events?after=-1"])
def test_event_ids_past_what_the_store_holds_are_refused(url: str) -> None:
    # was: OverflowError from SQLite binding the id, a 500 (and a negative id was taken for the whole log)
    r = asyncio.run(request("GET", url))
    assert r.status_code == 422, r.text
    assert r.json()["message"].startswith("query.after: Input should be")


def test_a_message_quoting_a_name_with_a_newline_stays_one_line() -> None:
    # was: "no VM named 'a\nb'" split over two lines, in the API's body and in the CLI's error
    msg = NotFound("no VM named 'a\nb\x1b\u2028c\td' (VMs: web)").message
    assert msg == "no VM named 'a\\nb\\x1b\\u2028c\\td' (VMs: web)"
    assert len(msg.splitlines()) == 1
    assert NotFound("no VM named 'café'").message == "no VM named 'café'"  # printable text is left alone


def test_a_refused_field_name_with_a_newline_stays_one_line() -> None:
    r = asyncio.run(request("PATCH", "/v1/vms/web", json={"\nx": 1}))
    assert r.status_code == 422, r.text
    assert r.json() == {"error": "InvalidInput", "message": "\\nx: Extra inputs are not permitted"}


@pytest.mark.parametrize(("method", "url", "kw", "status", "body"), [
    # was: FastAPI's own {"detail": "There was an error parsing the body"}, without Corral's error and message
    ("POST", "/v1/vms", {"content": b"\xd6\xc3A\xa0J", "headers": {"content-type": "application/json"}}, 400,
     {"error": "InvalidInput",
      "message": "the request body is not valid JSON: send a JSON object (Content-Type: application/json)"}),
    ("GET", "/v1/nothing", {}, 404,
     {"error": "NotFound", "message": "no API route /v1/nothing: see /openapi.json for the routes"}),
    ("PUT", "/v1/status", {}, 405,
     {"error": "InvalidInput", "message": "PUT is not allowed on /v1/status: see /openapi.json for its methods"}),
])
def test_errors_fastapi_raises_itself_get_corrals_error_body(method: str, url: str, kw: dict[str, Any], status: int,
                                                             body: dict[str, str]) -> None:
    r = asyncio.run(request(method, url, **kw))
    assert (r.status_code, r.json()) == (status, body)
