"""Shared folders on real VMs (tiny; debian-12's are in test_debian12_vm.py): launch --mount, read-only enforced,
no escape through symlinks, kept across a stop and start, a suspend and a crash of corrald; in fleet files;
`corral mount add|rm|ls` on a running VM; bad input changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import CorralEnv, guest, ok

pytestmark = pytest.mark.vm


def _share(tmp_path: Path) -> tuple[Path, Path]:
    share = tmp_path / "share"
    share.mkdir()
    (share / "hello.txt").write_text("hello from the host\n")
    secret = tmp_path / "secret.txt"  # outside the share
    secret.write_text("host secret\n")
    (share / "escape").symlink_to(secret)
    (share / "up").symlink_to("../secret.txt")
    return share, secret


def test_launch_with_a_read_only_mount(corral: CorralEnv, tmp_path: Path) -> None:
    share, _ = _share(tmp_path)
    ok(corral, "launch", "m1", "--mount", f"{share}:/mnt/share")
    assert guest(corral, "m1", "cat /mnt/share/hello.txt") == "hello from the host\n"
    # Read-only: enforced by QEMU on the host, whatever the guest does.
    r = corral.cli("exec", "m1", "--", "sh", "-c", "echo x > /mnt/share/new || mount -o remount,rw /mnt/share "
                   "&& echo y > /mnt/share/new")
    assert r.returncode != 0 and not (share / "new").exists()
    # A symlink in the share pointing outside it is resolved in the guest, never on the host.
    out = guest(corral, "m1", "cat /mnt/share/escape /mnt/share/up 2>&1; true")
    assert "host secret" not in out
    # Kept across a stop and start, and a suspend and resume.
    ok(corral, "stop", "m1")
    ok(corral, "start", "m1")
    ok(corral, "wait", "m1", "--ready")
    assert guest(corral, "m1", "cat /mnt/share/hello.txt") == "hello from the host\n"
    ok(corral, "suspend", "m1")
    ok(corral, "resume", "m1")
    ok(corral, "wait", "m1", "--ready")
    (share / "later.txt").write_text("after the resume\n")
    assert guest(corral, "m1", "cat /mnt/share/later.txt") == "after the resume\n"


def test_mount_add_rm_ls_on_a_running_vm(corral: CorralEnv, tmp_path: Path) -> None:
    share, _ = _share(tmp_path)
    rw = tmp_path / "rw"
    rw.mkdir()
    ok(corral, "launch", "m2")
    ok(corral, "mount", "add", "m2", f"{rw}:/mnt/rw:rw")
    ok(corral, "mount", "add", "m2", str(share))  # the guest directory defaults to the host path
    guest(corral, "m2", f"echo from the guest > /mnt/rw/g.txt && cat {share}/hello.txt")
    assert (rw / "g.txt").read_text() == "from the guest\n"
    listed = json.loads(ok(corral, "mount", "ls", "m2", "--json"))
    assert [(m["guest"], m["read_only"], m["state"]) for m in listed] == [
        ("/mnt/rw", False, "mounted"), (str(share), True, "mounted")]

    # Bad input: one line, non-zero, nothing changed.
    for bad, code in ((f"{tmp_path}/nope", 3), (f"{share}/hello.txt", 2), (f"{rw}:relative", 2),
                      (f"{share}:/mnt/rw", 2), (f"{share}:/etc", 2), (str(corral.home), 2)):
        r = corral.cli("mount", "add", "m2", bad)
        assert r.returncode == code, (bad, r.stderr)
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    r = corral.cli("mount", "rm", "m2", "/mnt/nothing")
    assert r.returncode == 3 and "/mnt/rw" in r.stderr
    assert json.loads(ok(corral, "mount", "ls", "m2", "--json")) == listed

    ok(corral, "mount", "rm", "m2", "/mnt/rw")
    assert "/mnt/rw" not in guest(corral, "m2", "cat /proc/mounts")
    assert [m["guest"] for m in json.loads(ok(corral, "mount", "ls", "m2", "--json"))] == [str(share)]


def test_launch_from_a_template_with_a_mount(corral: CorralEnv, tmp_path: Path) -> None:
    """The template's saved state has no 9p device: it is hot-plugged once the state has loaded."""
    share, _ = _share(tmp_path)
    ok(corral, "launch", "src")
    ok(corral, "template", "create", "base", "--from", "src")
    ok(corral, "launch", "m3", "--template", "base", "--mount", f"{share}:/mnt/s")
    assert guest(corral, "m3", "cat /mnt/s/hello.txt") == "hello from the host\n"
    # A VM with mounts is no template source (its 9p devices would be in the saved state).
    r = corral.cli("template", "create", "again", "--from", "m3")
    assert r.returncode == 2 and "shared folders" in r.stderr


def test_a_fleet_files_mount_kept_across_a_daemon_crash(corral: CorralEnv, tmp_path: Path) -> None:
    """A fleet file's `mounts:` (host paths relative to the file) reach the VM; corrald SIGKILLed and started again
    re-attaches it with the folder still shared and mounted; a second apply has nothing to do."""
    share, _ = _share(tmp_path)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("fleet: f\ndefaults: {image: tiny, memory: 128M}\n"
                     "vms:\n  web: {mounts: [{host: share, guest: /srv/share}]}\n")
    ok(corral, "apply", "-f", str(fleet), "--yes", "--wait", timeout=300)
    assert guest(corral, "web", "cat /srv/share/hello.txt") == "hello from the host\n"
    pid = corral.client.get_vm("web").pid
    corral.kill_daemon()
    corral.start_daemon()
    assert corral.client.get_vm("web").pid == pid, "the VM's QEMU was not kept"
    ok(corral, "wait", "web", "--ready")
    (share / "after.txt").write_text("after the crash\n")
    assert guest(corral, "web", "cat /srv/share/after.txt") == "after the crash\n"
    listed = json.loads(ok(corral, "mount", "ls", "web", "--json"))
    assert [m["guest"] for m in listed] == ["/srv/share"], listed
    assert corral.cli("diff", "-f", str(fleet), "--exit-code").returncode == 0
