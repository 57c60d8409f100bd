"""The memory balloon on real VMs: with --balloon, memory the guest frees goes back to the host (free page reporting)
while a VM without it keeps it; `corral balloon VM SIZE` takes memory from the guest live, `show` reports it, and it
holds across a suspend/resume; bad input (no balloon, stopped, out of range, templates) is a one-line error."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import CorralEnv, show, until

pytestmark = pytest.mark.vm

MiB = 1 << 20
FILL_MIB = 100


def rss_mib(pid: int) -> float:
    """The QEMU process's resident memory (VmRSS), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def guest(c: CorralEnv, name: str, script: str) -> str:
    r = c.cli("exec", name, "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def meminfo(c: CorralEnv, name: str) -> dict[str, int]:
    """The guest's /proc/meminfo, MiB."""
    lines = guest(c, name, "cat /proc/meminfo").splitlines()
    return {ln.split(":")[0]: int(ln.split()[1]) // 1024 for ln in lines if ln.split()[-1] == "kB"}


def test_freed_guest_memory_returns_to_the_host_only_with_a_balloon(corral: CorralEnv) -> None:
    for name, extra in (("bal", ["--balloon"]), ("plain", [])):
        r = corral.cli("launch", name, "--memory", "256M", *extra)
        assert r.returncode == 0, r.stderr
    pids = {name: show(corral, name)["pid"] for name in ("bal", "plain")}
    assert show(corral, "bal")["spec"]["balloon"] is True and show(corral, "plain")["spec"]["balloon"] is False

    before = {n: rss_mib(p) for n, p in pids.items()}
    for name in pids:  # random data: nothing for the host to deduplicate or find zero
        guest(corral, name, f"dd if=/dev/urandom of=/dev/shm/fill bs=1M count={FILL_MIB} 2>/dev/null")
    filled = {n: rss_mib(p) for n, p in pids.items()}
    for name in pids:
        assert filled[name] - before[name] > FILL_MIB * 0.7, (name, before, filled)
        guest(corral, name, "rm /dev/shm/fill")

    # Free page reporting: the guest reports freed 2-4 MiB blocks after about 2 s; QEMU discards them.
    until(lambda: rss_mib(pids["bal"]) < filled["bal"] - FILL_MIB * 0.7, 60, "the balloon VM's RSS to drop")
    time.sleep(3)  # as long again for the VM without a balloon: it keeps what its guest touched
    after = {n: rss_mib(p) for n, p in pids.items()}
    print(f"\n[balloon] RSS MiB before/filled/after: {before} {filled} {after}")
    assert after["plain"] > filled["plain"] - FILL_MIB * 0.2, (filled, after)
    assert filled["bal"] - after["bal"] > FILL_MIB * 0.7
    assert after["plain"] - after["bal"] > FILL_MIB * 0.5, "the contrast: only the balloon VM gave memory back"


def test_balloon_target_show_suspend_and_bad_input(corral: CorralEnv) -> None:
    r = corral.cli("launch", "bt", "--memory", "256M", "--balloon")
    assert r.returncode == 0, r.stderr
    b = show(corral, "bt")["balloon"]
    assert b["memory"] == 256 * MiB and b["size"] == 256 * MiB and b["target"] is None, b
    avail0 = meminfo(corral, "bt")["MemAvailable"]

    r = corral.cli("balloon", "bt", "96M")
    assert r.returncode == 0, r.stderr
    assert "bt: 96M of 256M" in r.stdout, r.stdout
    b = show(corral, "bt")["balloon"]
    assert b["size"] == 96 * MiB and b["target"] == 96 * MiB, b
    assert "balloon:" in (text := corral.cli("show", "bt").stdout) and "96M of 256M" in text, text
    # deflate-on-oom: the guest counts the ballooned memory as used (MemAvailable), not as a smaller MemTotal.
    info = meminfo(corral, "bt")
    assert info["MemAvailable"] < avail0 - 120, (avail0, info)
    # The guest's own statistics come through the balloon every few seconds.
    until(lambda: (s := show(corral, "bt")["balloon"])["guest_available"] is not None
          and s["guest_available"] < (avail0 - 120) * MiB, 30, "the guest's statistics to show the balloon")

    # Live: a suspend/resume keeps it (it is in the saved device state).
    assert corral.cli("suspend", "bt").returncode == 0
    r = corral.cli("balloon", "bt", "128M")
    assert r.returncode == 4 and r.stderr.count("\n") == 1 and "is suspended" in r.stderr, r.stderr
    assert corral.cli("resume", "bt").returncode == 0
    assert show(corral, "bt")["balloon"]["size"] == 96 * MiB
    r = corral.cli("balloon", "bt", "256M")
    assert r.returncode == 0 and "bt: 256M of 256M" in r.stdout, r.stdout + r.stderr

    # Bad input: one line, non-zero, nothing changed.
    for args, code, text in (
        (["balloon", "bt", "1G"], 2, "out of range for VM 'bt': give 64M to 256M"),
        (["balloon", "bt", "32M"], 2, "out of range"),
        (["balloon", "bt", "lots"], 2, "not a size"),
        (["balloon", "nope", "96M"], 3, "no VM named 'nope'"),
        (["template", "create", "t1", "--from", "bt"], 2, "has a balloon"),
        (["launch", "x1", "--balloon", "--template", "t1"], 2, "--balloon is not possible with --template"),
    ):
        r = corral.cli(*args)
        assert r.returncode == code and text in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
    assert show(corral, "bt")["balloon"]["size"] == 256 * MiB
    assert not (corral.settings.home / "templates" / "t1").exists()
    assert [v.name for v in corral.client.list_vms()] == ["bt"]

    r = corral.cli("launch", "np", "--memory", "128M", "--no-wait")
    assert r.returncode == 0, r.stderr
    r = corral.cli("balloon", "np", "96M")
    assert r.returncode == 2 and "has no balloon" in r.stderr and "--balloon" in r.stderr, r.stderr
    assert show(corral, "np")["balloon"] is None
    assert corral.cli("stop", "bt").returncode == 0
    r = corral.cli("balloon", "bt", "96M")
    assert r.returncode == 4 and "is stopped" in r.stderr and "corral start bt" in r.stderr, r.stderr
    assert show(corral, "bt")["balloon"] is None

    # The balloon is part of the spec: changed on a stopped VM (PATCH, as a fleet file does), used from its next start.
    assert corral.client.update_vm("bt", balloon=False).spec.balloon is False
    assert corral.cli("start", "bt").returncode == 0
    r = corral.cli("balloon", "bt", "96M")
    assert r.returncode == 2 and "has no balloon" in r.stderr, r.stderr
