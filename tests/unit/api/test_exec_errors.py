"""An exec that fails after its stream began (the VM paused meanwhile, the agent failed) reports the error's class
and the status it would have had before the 200, and the client raises exactly that: a 409 stays a 409."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from corral.api.models import ExecChunk
from corral.client import APIError, Client


def client_answering(lines: list[ExecChunk]) -> Client:
    body = b"".join(c.model_dump_json(exclude_none=True).encode() + b"\n" for c in lines)
    c = Client(Path("/nonexistent.sock"))
    c._http.close()
    c._http = httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(200, content=body)),
                           base_url="http://corral/v1")
    return c


@pytest.mark.parametrize("error,status", [("StateError", 409), ("GuestAgentTimeout", 502)])
def test_error_line_keeps_its_class_and_status(error: str, status: int) -> None:
    with client_answering([ExecChunk(kind="error", message="cannot exec VM 'a' while it is paused",
                                     error=error, status=status)]) as c, pytest.raises(APIError) as exc:
        c.exec("a", ["true"])
    assert (exc.value.status, exc.value.error) == (status, error)


def test_error_line_of_an_older_daemon_is_an_engine_error() -> None:
    with client_answering([ExecChunk(kind="error", message="boom")]) as c, pytest.raises(APIError) as exc:
        c.exec("a", ["true"])
    assert (exc.value.status, exc.value.error) == (502, "EngineError")
