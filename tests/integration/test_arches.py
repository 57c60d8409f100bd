"""Guests of other architectures than the host's (docs/explanation/architectures.md): one VM per foreign
architecture, each checking as much as one boot allows. The images come from the shared build cache (`make test`
prepares them: scripts/prepare_images.py tiny@aarch64 tiny@riscv64)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import CorralEnv, ok, show

pytestmark = pytest.mark.vm


def one_line_error(r: object, *needles: str) -> str:
    """The single stderr line of a refused command (non-zero exit), which must name every needle."""
    assert r.returncode != 0, r.stdout  # type: ignore[attr-defined]
    lines = r.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1, r.stderr  # type: ignore[attr-defined]
    for n in needles:
        assert n in lines[0], lines[0]
    return str(lines[0])


def ls_json(c: CorralEnv) -> list[dict[str, object]]:
    return json.loads(ok(c, "ls", "--json"))  # type: ignore[no-any-return]


def guest(c: CorralEnv, name: str, script: str) -> str:
    return ok(c, "exec", name, "--", "sh", "-c", script).strip()


def ls_row(c: CorralEnv, name: str) -> tuple[list[str], list[str]]:
    """`corral ls`'s header and ``name``'s row, split into words (wide enough that no column is cut)."""
    c.env["COLUMNS"] = "200"
    try:
        header, *rows = ok(c, "ls").splitlines()
    finally:
        del c.env["COLUMNS"]
    return header.split(), next(r.split() for r in rows if r.split()[0] == name)


@pytest.mark.slow  # 36-46 s of a worker at load 4-5, 2.5-4 min at load 13: handed out first
def test_aarch64_vm_runs_execs_lists_and_snapshots(corral: CorralEnv) -> None:
    # Bad input first (no VM needed): each a one-line error, nothing created.
    one_line_error(corral.cli("launch", "bad", "--arch", "sparc64"), "--arch 'sparc64'", "x86_64, aarch64, riscv64")
    one_line_error(corral.cli("launch", "bad", "--arch", "aarch64"),  # a fresh home has only the host's tiny
                   "not installed for aarch64", "corral images build tiny --arch aarch64")
    one_line_error(corral.cli("images", "build", "debian-12", "--arch", "aarch64"), "built for x86_64 only")
    one_line_error(corral.cli("images", "build", "tiny", "--arch", "mips"), "--arch 'mips'")
    assert ls_json(corral) == []

    ok(corral, "images", "build", "tiny", "--arch", "aarch64")
    images = json.loads(ok(corral, "images", "ls", "--json"))
    assert {(m["name"], m["arch"]) for m in images} == {("tiny", "x86_64"), ("tiny", "aarch64")}
    out = ok(corral, "launch", "a1", "--arch", "aarch64")
    assert "a1 ready" in out and "(tcg" in out  # never KVM for a foreign guest
    assert guest(corral, "a1", "uname -m") == "aarch64"
    [vm] = ls_json(corral)
    assert vm["spec"]["arch"] == "aarch64" and vm["accel"] == "tcg"  # type: ignore[index]
    header, row = ls_row(corral, "a1")
    assert row[header.index("ARCH")] == "aarch64"
    assert show(corral, "a1")["spec"]["arch"] == "aarch64"

    # A whole-machine snapshot: the state file of arm's virt machine saves and loads.
    guest(corral, "a1", "echo before > /root/mark")
    ok(corral, "snapshot", "create", "a1", "s1", "--memory")
    guest(corral, "a1", "echo after > /root/mark")
    ok(corral, "snapshot", "revert", "a1", "s1", "--force")
    assert guest(corral, "a1", "cat /root/mark") == "before"
    ok(corral, "snapshot", "rm", "a1", "s1")

    # (A template of a foreign VM, whose RAM file must carry the machine's RAM block name, is checked on the command
    # line in tests/unit/engine/test_cmdline_arch.py; one boot here is enough.) --arch comes from a template:
    one_line_error(corral.cli("launch", "a2", "--template", "ta", "--arch", "aarch64"),
                   "--arch comes from the template")


@pytest.mark.slow
def test_riscv64_vm_runs_shares_a_folder_and_stops_without_a_power_button(corral: CorralEnv, tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "in.txt").write_text("from the host\n")
    other = tmp_path / "other"
    other.mkdir()
    ok(corral, "images", "build", "tiny", "--arch", "riscv64")
    out = ok(corral, "launch", "r1", "--arch", "riscv64", "--mount", f"{share}:/mnt/s:rw")
    assert "(tcg" in out
    assert guest(corral, "r1", "uname -m") == "riscv64"
    header, row = ls_row(corral, "r1")
    assert row[header.index("ARCH")] == "riscv64"
    # The kernel's own 9p modules serve a folder given at start, both ways.
    assert guest(corral, "r1", "cat /mnt/s/in.txt; echo back > /mnt/s/out.txt") == "from the host"
    assert (share / "out.txt").read_text() == "back\n"
    # riscv64's kernel has no PCIe hot-plug: a live mount is refused in one line, and nothing changes.
    before = ok(corral, "mount", "ls", "r1", "--json")
    one_line_error(corral.cli("mount", "add", "r1", str(other)), "riscv64", "no PCIe hot-plug", "corral stop r1")
    one_line_error(corral.cli("disk", "add", "r1", "data", "--size", "64M"), "no PCIe hot-plug")
    assert ok(corral, "mount", "ls", "r1", "--json") == before
    assert json.loads(ok(corral, "disk", "ls", "r1", "--json")) == []
    # No power button on riscv's virt: the stop goes through the guest agent, and is clean (not a kill).
    ok(corral, "stop", "r1")
    assert show(corral, "r1")["state"] == "stopped"
    events = json.loads(ok(corral, "events", "--vm", "r1", "--json"))
    assert not [e for e in events if "killing QEMU" in str(e)], events
