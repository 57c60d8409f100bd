"""The audit middleware: which requests are operations, on which VM, and who asked."""

from __future__ import annotations

import pytest

from corral.api.audit import actor_of, operation


@pytest.mark.parametrize("method,path,body,want", [
    ("POST", "/v1/vms", b'{"name": "web", "image": "tiny"}', ("web", "create")),
    ("POST", "/v1/vms", b"not json", (None, "create")),
    ("DELETE", "/v1/vms/web", b"", ("web", "delete")),
    ("POST", "/v1/vms/web/start", b"", ("web", "start")),
    ("POST", "/v1/vms/web/labels", b"{}", ("web", "label")),
    ("DELETE", "/v1/vms/web/ports/8080", b"", ("web", "port")),
    ("PUT", "/v1/vms/web/files", b"", ("web", "cp")),
    ("POST", "/v1/networks", b"{}", (None, "network")),
    ("POST", "/v1/images/tiny/build", b"", (None, "image")),
    ("POST", "/v1/vms/web/wait", b"", None),
    ("GET", "/v1/vms/web", b"", None),
    ("POST", "/other", b"", None),
])
def test_operation(method: str, path: str, body: bytes, want: tuple[str | None, str] | None) -> None:
    assert operation(method, path, body) == want


def test_actor_from_header() -> None:
    assert actor_of([(b"x-corral-user", b"ann")]) == "ann"
    assert actor_of([(b"X-Corral-User", b"a b;c")]) == "a_b_c"
    assert actor_of([]) == "anonymous"
