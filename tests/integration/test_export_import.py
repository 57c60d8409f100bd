"""Portable VMs on real VMs: export a running VM with its snapshot tree and machine state, delete it, import it
(here and on a second Corral home with no image installed): it resumes where it was and its snapshots are there.
A damaged archive is refused with one line and nothing is created."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import CorralEnv, make_env, show

pytestmark = pytest.mark.vm


def guest(c: CorralEnv, name: str, *cmd: str) -> str:
    r = c.cli("exec", name, "--", *cmd)
    assert r.returncode == 0, r.stderr
    return r.stdout


def snapshots(c: CorralEnv, name: str) -> dict[str, str | None]:
    r = c.cli("snapshot", "ls", name, "--json")
    assert r.returncode == 0, r.stderr
    return {s["name"]: s["parent"] for s in json.loads(r.stdout)}


def write(c: CorralEnv, name: str, text: str) -> None:
    guest(c, name, "sh", "-c", f"echo {text} > /root/f && sync")


def layer_files(c: CorralEnv) -> set[str]:
    d = c.home / "layers"
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


@pytest.mark.slow
def test_export_delete_import_keeps_tree_and_state(corral: CorralEnv, tmp_path: Path) -> None:
    assert corral.cli("launch", "port").returncode == 0
    write(corral, "port", "one")
    assert corral.cli("snapshot", "create", "port", "s1").returncode == 0
    write(corral, "port", "two")
    assert corral.cli("snapshot", "create", "port", "s2").returncode == 0
    write(corral, "port", "three")
    boot_id = guest(corral, "port", "cat", "/proc/sys/kernel/random/boot_id")

    archive = tmp_path / "port.tar.gz"
    r = corral.cli("export", "port", str(archive), "--state")
    assert r.returncode == 0, r.stderr
    assert archive.is_file() and "exported to" in r.stdout
    assert show(corral, "port")["state"] == "running"  # exported without stopping it
    assert len(layer_files(corral)) == 3  # s1, s2 and the top: the layer frozen for the export was merged back
    assert guest(corral, "port", "cat", "/root/f").strip() == "three"

    # A damaged copy: one line, nothing created.
    bad = tmp_path / "bad.tar.gz"
    raw = bytearray(archive.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad.write_bytes(bytes(raw))
    before = layer_files(corral)
    r = corral.cli("import", str(bad), "--name", "broken")
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert corral.cli("show", "broken").returncode != 0
    assert layer_files(corral) == before
    assert not list(corral.home.glob(".import-*"))
    # Exporting onto an existing file is refused, and the file is untouched.
    r = corral.cli("export", "port", str(bad))
    assert r.returncode != 0 and "already exists" in r.stderr
    assert bad.read_bytes() == bytes(raw)

    assert corral.cli("rm", "--force", "port").returncode == 0
    r = corral.cli("import", str(archive))
    assert r.returncode == 0, r.stderr
    assert show(corral, "port")["state"] == "suspended"
    assert snapshots(corral, "port") == {"s1": None, "s2": "s1"}
    assert corral.cli("start", "port").returncode == 0
    assert corral.cli("wait", "port", "--ready", "--timeout", "120").returncode == 0
    assert guest(corral, "port", "cat", "/root/f").strip() == "three"
    assert guest(corral, "port", "cat", "/proc/sys/kernel/random/boot_id") == boot_id  # resumed, not rebooted
    # The tree is usable: back to s1.
    assert corral.cli("stop", "port").returncode == 0
    r = corral.cli("snapshot", "revert", "port", "s1")
    assert r.returncode == 0, r.stderr
    assert corral.cli("start", "port").returncode == 0
    assert corral.cli("wait", "port", "--ready", "--timeout", "120").returncode == 0
    assert guest(corral, "port", "cat", "/root/f").strip() == "one"

    # Another "host": a second Corral home with no image installed; the stopped VM's export carries its image.
    r = corral.cli("disk", "add", "port", "data", "--size", "64M")
    assert r.returncode == 0, r.stderr
    r = corral.cli("export", "port", str(tmp_path / "live.tar.gz"))  # extra disks: only from a stopped VM
    assert r.returncode != 0 and "stop" in r.stderr and not (tmp_path / "live.tar.gz").exists()
    assert corral.cli("stop", "port").returncode == 0
    stopped = tmp_path / "stopped.tar.gz"
    assert corral.cli("export", "port", str(stopped)).returncode == 0
    other = make_env(Path(tempfile.mkdtemp(prefix="ch-", dir="/tmp")))
    try:
        other.start_daemon()
        r = other.cli("import", str(stopped), "--name", "moved")
        assert r.returncode == 0, r.stderr
        assert show(other, "moved")["state"] == "stopped"
        assert snapshots(other, "moved") == {"s1": None, "s2": "s1"}
        assert "tiny" in other.cli("images", "ls").stdout
        disks = json.loads(other.cli("disk", "ls", "moved", "--json").stdout)
        assert [(d["name"], d["size"]) for d in disks] == [("data", 64 << 20)]
        assert other.cli("start", "moved").returncode == 0
        assert other.cli("wait", "moved", "--ready", "--timeout", "120").returncode == 0
        assert guest(other, "moved", "cat", "/root/f").strip() == "one"
        assert other.cli("stop", "moved").returncode == 0
        r = other.cli("snapshot", "revert", "moved", "s2")
        assert r.returncode == 0, r.stderr
        assert other.cli("start", "moved").returncode == 0
        assert other.cli("wait", "moved", "--ready", "--timeout", "120").returncode == 0
        assert guest(other, "moved", "cat", "/root/f").strip() == "two"
    finally:
        other.cleanup()
        shutil.rmtree(other.home, ignore_errors=True)
