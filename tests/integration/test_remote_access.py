"""A real `corrald` with `CORRAL_LISTEN=127.0.0.1:PORT`: users made with the CLI over the unix socket, then the CLI
over HTTPS after `corral login` (trust on first use, pinned), a viewer of project web sees only web's VMs and is
refused a stop (one line, recorded with the actor), a request without a token is 401, and a certificate other than
the pinned one is refused. No VM boots: they are created, not started."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from corral.auth import tls
from corral.client import remote as remotes
from tests.conftest import CORRAL, CorralEnv, start_daemon_with

PASSWORD = b"viewer-pass-1\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def listening(corral_home: CorralEnv, tmp_path: Path) -> tuple[CorralEnv, str]:
    port = free_port()
    corral_home.env["CORRAL_REMOTE_CONFIG"] = str(tmp_path / "remote.json")
    for k in ("CORRAL_URL", "CORRAL_TOKEN"):
        corral_home.env.pop(k, None)
    start_daemon_with(corral_home, {"CORRAL_LISTEN": f"127.0.0.1:{port}"})
    return corral_home, f"https://127.0.0.1:{port}"


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_remote_access(listening: tuple[CorralEnv, str], tmp_path: Path) -> None:
    c, url = listening
    r = c.cli("user", "add", "vic", "--role", "viewer", "--project", "web", "--password-stdin", input=PASSWORD)
    assert r.returncode == 0, r.stderr
    # bad input: one line, its exit code, nothing changed
    bad = c.cli("user", "add", "eve", "--role", "root", "--password-stdin", input=PASSWORD)
    assert bad.returncode == 2 and "role" in one_line_error(bad)
    assert c.cli("user", "add", "eve", "--role", "viewer", "--project", "No_Such", "--password-stdin",
                 input=PASSWORD).returncode == 2
    assert c.cli("user", "add", "eve", "--role", "viewer", "--password-stdin", input=b"\n").returncode == 2
    dup = c.cli("user", "add", "vic", "--role", "admin", "--password-stdin", input=PASSWORD)
    assert dup.returncode == 4 and "already exists" in one_line_error(dup)
    users = json.loads(c.cli("user", "ls", "--json").stdout)
    assert [(u["name"], u["role"], u["project"]) for u in users] == [("vic", "viewer", "web")]
    for name, project in (("w1", "web"), ("d1", "data")):
        c.client.create_vm({"name": name, "image": "tiny", "project": project})
    assert c.cli("user", "add", "adm", "--role", "admin", "--no-password").returncode == 0
    r = c.cli("token", "create", "--user", "adm", "--ttl", "1h", "--description", "test")
    assert r.returncode == 0, r.stderr
    admin_token = r.stdout.strip()

    # the certificate is checked: a wrong expected fingerprint is refused, nothing saved
    r = c.cli("login", url, "--user", "vic", "--password-stdin", "--fingerprint", "AB:" * 31 + "AB", input=PASSWORD)
    assert "not the expected" in one_line_error(r)
    assert not (tmp_path / "remote.json").exists()
    r = c.cli("login", url, "--user", "vic", "--password-stdin", input=PASSWORD)  # no tty, no --yes: not trusted
    assert "not trusted" in r.stderr and r.returncode != 0

    r = c.cli("login", url, "--user", "vic", "--password-stdin", "--yes", input=PASSWORD)
    assert r.returncode == 0, r.stderr
    assert "as vic (viewer of project web)" in r.stdout
    config = tmp_path / "remote.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    saved = json.loads(config.read_text())
    assert saved["url"] == url and saved["token"].startswith("crl_")
    assert tls.fingerprint(saved["cert_pem"].encode()) == tls.fingerprint((c.home / "tls" / "cert.pem").read_bytes())

    # over TCP: the viewer sees web's VMs only, and may not stop one
    r = c.cli("ls", "--json")
    assert r.returncode == 0, r.stderr
    assert [v["name"] for v in json.loads(r.stdout)] == ["w1"]
    assert "vic: viewer of project web" in c.cli("whoami").stdout
    assert "may not operate VMs in project 'web'" in one_line_error(c.cli("stop", "w1"))
    refused = [e for e in c.client.events(vm="w1") if e.result == "error"]
    assert refused and refused[-1].actor == "vic" and refused[-1].type == "stop"
    assert "may not" in one_line_error(c.cli("show", "d1"))

    # no token: 401, one line, nothing listed
    with httpx.Client(verify=False) as h:
        r401 = h.get(url + "/v1/vms")
    assert r401.status_code == 401 and r401.json()["error"] == "Unauthorized"

    # a server presenting another certificate than the pinned one is refused
    other, _ = tls.self_signed()
    remotes.save(remotes.Remote(url=url, token=saved["token"], cert_pem=other.decode(), user="vic"), config)
    r = c.cli("ls")
    assert r.returncode == 7 and "CERTIFICATE_VERIFY_FAILED" in r.stderr

    # an admin's token through CORRAL_URL and CORRAL_TOKEN (with the pinned certificate of the saved login)
    remotes.save(remotes.Remote(url=url, token=saved["token"], cert_pem=saved["cert_pem"], user="vic"), config)
    admin_env = dict(c.env, CORRAL_URL=url, CORRAL_TOKEN=admin_token)
    r = subprocess.run([CORRAL, "ls", "--json"], env=admin_env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(v["name"] for v in json.loads(r.stdout)) == ["d1", "w1"]

    assert c.cli("logout").returncode == 0 and not config.exists()
    assert "root: admin of every project" in c.cli("whoami").stdout  # the unix socket again


def test_corrald_listen_flag_refuses_a_bad_address(tmp_path: Path) -> None:
    env = dict(os.environ, CORRAL_HOME=str(tmp_path / "h"))
    r = subprocess.run([sys.executable, "-m", "corral.daemon.main", "--listen", "nowhere"], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "is not ADDR:PORT" in r.stderr
