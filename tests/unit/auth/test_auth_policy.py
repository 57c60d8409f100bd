"""The policy table: every route of the app has an entry, and the roles say what the contract says."""

from __future__ import annotations

import pytest
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount

from corral.api.app import create_app
from corral.auth import policy
from corral.auth.errors import Forbidden
from corral.auth.principal import LOCAL_ROOT, Principal


def app_routes() -> list[tuple[str, str]]:
    out = []
    for r in iter_route_contexts(create_app().routes):
        if isinstance(r.original_route, Mount):
            assert r.path in policy.PUBLIC_MOUNTS, f"mount {r.path!r} has no policy: add it to PUBLIC_MOUNTS"
            continue
        for m in sorted(r.methods or {"WS"}):
            if m != "HEAD":
                out.append((m, r.path_format))
    return out


def test_every_route_of_the_app_has_a_policy_entry() -> None:
    routes = app_routes()
    assert len(routes) > 90
    missing = [f"{m} {p}" for m, p in routes if (m, p) not in policy.POLICY]
    assert not missing, f"routes without an entry in corral.auth.policy.POLICY: {missing}"


def test_a_new_route_without_an_entry_fails_the_coverage_check() -> None:
    app = create_app()

    @app.post("/v1/brand-new")
    async def brand_new() -> None: ...

    have = {(m, r.path_format) for r in iter_route_contexts(app.routes) for m in (r.methods or ())}
    assert ("POST", "/v1/brand-new") in have and ("POST", "/v1/brand-new") not in policy.POLICY
    assert policy.rule_for("POST", "/v1/brand-new") == policy.ADMIN  # and at run time: admin only


viewer = Principal("v", "viewer", "web")
operator = Principal("o", "operator", "web")
global_viewer = Principal("g", "viewer", None)
admin = Principal("a", "admin", None)


@pytest.mark.parametrize(("who", "action", "project", "ok"), [
    (viewer, "read", "web", True), (viewer, "read", "data", False), (viewer, "read", None, True),
    (viewer, "operate", "web", False), (viewer, "console", "web", False), (viewer, "admin", None, False),
    (viewer, "self", None, True),
    (operator, "operate", "web", True), (operator, "create", "web", True), (operator, "delete", "web", True),
    (operator, "console", "web", True), (operator, "operate", "data", False), (operator, "create", None, False),
    (operator, "admin", None, False), (operator, "no-such-action", "web", False),
    (global_viewer, "read", "data", True), (global_viewer, "operate", "data", False),
    (admin, "admin", None, True), (admin, "operate", "data", True), (LOCAL_ROOT, "admin", None, True),
])
def test_roles(who: Principal, action: str, project: str | None, ok: bool) -> None:
    assert policy.allowed(who, action, project) is ok


def test_require_is_one_line_forbidden() -> None:
    with pytest.raises(Forbidden, match="viewer 'v' may not operate VMs in project 'web'"):
        policy.require(viewer, "operate", "web")
    policy.require(operator, "operate", "web")


def test_visible() -> None:
    assert policy.visible(viewer, "web") and not policy.visible(viewer, "data")
    assert not policy.visible(viewer, None)  # a daemon event: for principals of every project only
    assert policy.visible(admin, None) and policy.visible(global_viewer, "data")


@pytest.mark.parametrize(("method", "template", "action"), [
    ("GET", "/v1/vms", "read"), ("POST", "/v1/vms/{name}/stop", "operate"),
    ("POST", "/v1/vms/{name}/exec", "operate"), ("DELETE", "/v1/vms/{name}", "delete"), ("POST", "/v1/vms", "create"),
    ("PUT", "/v1/quotas/{scope}/{name}", "admin"),
    ("POST", "/v1/users", "admin"), ("POST", "/v1/networks", "admin"), ("POST", "/v1/images/{name}/build", "admin"),
    ("POST", "/v1/auth/login", "public"), ("GET", "/v1/auth/whoami", "self"), ("HEAD", "/v1/vms", "read"),
    ("WS", "/v1/vms/{name}/console", "console"),
])
def test_table_entries(method: str, template: str, action: str) -> None:
    assert policy.rule_for(method, template).action == action
