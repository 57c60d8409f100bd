"""Bad users and tokens are refused with the API's one-line error, and change nothing."""

from __future__ import annotations

import pytest
from conftest import Remote


@pytest.mark.parametrize(("body", "words"), [
    ({"name": "ann", "role": "root", "password": "x"}, "role: Input should be 'admin', 'operator' or 'viewer'"),
    ({"name": "ann", "role": "viewer", "project": "Bad_Project", "password": "x"}, "project"),
    ({"name": "ann", "role": "viewer", "password": ""}, "password: String should have at least 1 character"),
    ({"name": "a b\n", "role": "viewer", "password": "x"}, "user name"),
    ({"name": "ann", "role": "admin", "project": "web", "password": "x"}, "an admin acts on every project"),
    ({"role": "viewer"}, "name: Field required"),
])
def test_bad_user_is_refused_in_one_line(remote: Remote, body: dict[str, object], words: str) -> None:
    r = remote.request("POST", "/v1/users", local=True, json=body)
    assert r.status_code == 422, r.text
    msg = r.json()["message"]
    assert words in msg and "\n" not in msg
    assert remote.auth.list_users() == []


def test_duplicate_user_is_a_conflict_and_keeps_the_first(remote: Remote) -> None:
    ok = remote.request("POST", "/v1/users", local=True, json={"name": "ann", "role": "viewer", "password": "a"})
    assert ok.status_code == 201
    r = remote.request("POST", "/v1/users", local=True, json={"name": "ann", "role": "admin", "password": "b"})
    assert r.status_code == 409 and "already exists" in r.json()["message"]
    assert [(u.name, u.role) for u in remote.auth.list_users()] == [("ann", "viewer")]


def test_bad_tokens_requests(remote: Remote) -> None:
    r = remote.request("POST", "/v1/tokens", local=True, json={})
    assert r.status_code == 422 and "--user" in r.json()["message"]  # the local root is no user
    r = remote.request("POST", "/v1/tokens", local=True, json={"user": "ghost"})
    assert r.status_code == 404
    r = remote.request("POST", "/v1/tokens", local=True, json={"user": "ghost", "ttl": -1})
    assert r.status_code == 422
    assert remote.request("DELETE", "/v1/tokens/nope", local=True).status_code == 404
    assert remote.request("DELETE", "/v1/users/ghost", local=True).status_code == 404
    assert remote.auth.store.list_tokens() == []


def test_login_bad_bodies(remote: Remote) -> None:
    for body in ({"user": "ann"}, {"user": "", "password": "x"}, {"user": "ann", "password": "x" * 5000}):
        r = remote.request("POST", "/v1/auth/login", json=body)
        assert r.status_code == 422 and "\n" not in r.json()["message"]
    r = remote.request("POST", "/v1/auth/login", json={"user": "nobody", "password": "x"})
    assert r.status_code == 401 and r.json()["error"] == "Unauthorized"
