"""Snapshots on real tiny VMs: a whole-machine revert continues a counting process from the snapshot's value;
deleting a middle snapshot leaves the others' data intact (checksums of guest files at each); `snapshot ls` draws
the tree; a hung guest agent does not hang a snapshot; bad input is one line and changes nothing."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import CorralEnv, guest, ok, until

pytestmark = pytest.mark.vm

#: Renamed into place, so that a reader never sees the file empty between its truncation and the write.
COUNTER = "i=0; while :; do echo $i > /root/count.t; mv /root/count.t /root/count; i=$((i+1)); sleep 0.2; done"


def snapshots(c: CorralEnv, vm: str) -> list[dict]:  # type: ignore[type-arg]
    return json.loads(ok(c, "snapshot", "ls", vm, "--json"))  # type: ignore[no-any-return]


def layer_files(c: CorralEnv) -> set[str]:
    d = c.home / "layers"
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


def test_whole_machine_revert_continues_the_counter(corral: CorralEnv) -> None:
    ok(corral, "launch", "cnt")
    guest(corral, "cnt", f"({COUNTER}) >/dev/null 2>&1 &")
    until(lambda: int(guest(corral, "cnt", "cat /root/count 2>/dev/null || echo 0")) > 5, 60, "the counter to count")
    before = int(guest(corral, "cnt", "cat /root/count"))
    ok(corral, "snapshot", "create", "cnt", "counting", "--memory")
    at = int(guest(corral, "cnt", "cat /root/count"))  # just after the snapshot: about its value
    assert at >= before
    time.sleep(4.0)
    later = int(guest(corral, "cnt", "cat /root/count"))
    assert later > at + 10, (at, later)

    r = corral.cli("snapshot", "revert", "cnt", "counting")  # running: refused without --force, nothing changed
    assert r.returncode == 4 and "--force" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert int(guest(corral, "cnt", "cat /root/count")) >= later

    ok(corral, "snapshot", "revert", "cnt", "counting", "--force")
    back = int(guest(corral, "cnt", "cat /root/count"))
    # From about the snapshot's value: not from 0 (a reboot), not from later (nothing reverted).
    assert before <= back < later, (before, at, back, later)
    time.sleep(1.0)
    assert int(guest(corral, "cnt", "cat /root/count")) > back, "the process keeps counting"
    show = json.loads(ok(corral, "show", "cnt", "--json"))
    assert show["state"] == "running"


def test_deleting_a_middle_snapshot_keeps_the_others(corral: CorralEnv) -> None:
    ok(corral, "launch", "tri")
    sums = {}
    for n in ("s1", "s2", "s3"):
        guest(corral, "tri", f"head -c 300000 /dev/urandom > /root/data; echo {n} >> /root/data; sync")
        sums[n] = guest(corral, "tri", "sha256sum /root/data").split()[0]
        ok(corral, "snapshot", "create", "tri", n)
    guest(corral, "tri", "echo now > /root/data; sync")
    lines = ok(corral, "snapshot", "ls", "tri").splitlines()
    assert [ln.lstrip("└─├│ ").split()[0] for ln in lines] == ["s1", "s2", "s3", "(now)"], lines

    ok(corral, "snapshot", "rm", "tri", "s2")  # the middle one, while the VM runs
    tree = {s["name"]: s for s in snapshots(corral, "tri")}
    assert set(tree) == {"s1", "s3"} and tree["s3"]["parent"] == "s1" and tree["s3"]["current"], tree
    assert guest(corral, "tri", "cat /root/data") == "now\n", "the current state is untouched"

    for n in ("s1", "s3", "s1"):
        ok(corral, "snapshot", "revert", "tri", n, "--force")  # disk-only: the VM is left stopped
        assert json.loads(ok(corral, "show", "tri", "--json"))["state"] == "stopped"
        ok(corral, "start", "tri")
        assert guest(corral, "tri", "sha256sum /root/data").split()[0] == sums[n], n

    # A tree: s1 -> s3, and s1 -> (now) after the last revert; deleting s1 (stopped: qemu-img rebase) keeps s3.
    ok(corral, "stop", "tri")
    ok(corral, "snapshot", "rm", "tri", "s1")
    ok(corral, "snapshot", "revert", "tri", "s3")
    ok(corral, "start", "tri")
    assert guest(corral, "tri", "sha256sum /root/data").split()[0] == sums["s3"]
    # Only the layers still used are left: s3's and the VM's top.
    assert len([f for f in layer_files(corral) if f.endswith(".qcow2")]) == 2, layer_files(corral)

    ok(corral, "rm", "--force", "tri")
    assert layer_files(corral) == set(), "a deleted VM leaves no layer behind"


def test_snapshot_tree_and_bad_input(corral: CorralEnv) -> None:
    corral.client.create_vm({"name": "st"})
    ok(corral, "snapshot", "create", "st", "a")  # a stopped VM: qemu-img, instant
    ok(corral, "snapshot", "create", "st", "b")
    ok(corral, "snapshot", "revert", "st", "a")
    ok(corral, "snapshot", "create", "st", "c")
    assert ok(corral, "snapshot", "ls", "st").splitlines()[0].startswith("a ")
    tree = {s["name"]: s for s in snapshots(corral, "st")}
    assert tree["b"]["parent"] == "a" and tree["c"]["parent"] == "a" and tree["c"]["current"], tree
    text = ok(corral, "snapshot", "ls", "st")
    assert "├── b" in text and "└── c" in text and "    └── (now)" in text, text

    files = layer_files(corral)
    events = len(corral.client.events("st"))
    cases = [
        (("snapshot", "create", "st", "a"), 4, "already has a snapshot named 'a'"),
        (("snapshot", "create", "st", "bad name"), 2, "is not valid"),
        (("snapshot", "create", "st", "m", "--memory"), 4, "needs it running"),
        (("snapshot", "create", "nope", "x"), 3, "no VM named 'nope'"),
        (("snapshot", "revert", "st", "zz"), 3, "has no snapshot named 'zz'"),
        (("snapshot", "rm", "st", "zz"), 3, "has no snapshot named 'zz'"),
        (("clone", "st", "st"), 4, "already exists"),
        (("clone", "st", "n1", "--snapshot", "zz"), 3, "has no snapshot named 'zz'"),
        (("clone", "st", "bad name"), 2, "is not valid"),
    ]
    for args, code, text in cases:
        r = corral.cli(*args)
        assert r.returncode == code, (args, r.returncode, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
        if text:
            assert text in r.stderr, (args, r.stderr)
    assert layer_files(corral) == files, "nothing changed"
    assert {s["name"] for s in snapshots(corral, "st")} == {"a", "b", "c"}
    assert [v.name for v in corral.client.list_vms()] == ["st"]
    new = [e for e in corral.client.events("st")[events:] if e.result == "ok"]
    assert not new, new


def test_a_hung_guest_agent_does_not_hang_a_snapshot(corral: CorralEnv) -> None:
    ok(corral, "launch", "hung")
    # Stop the agent a moment after this exec has returned; dropbear (corral shell) still answers.
    guest(corral, "hung", "(sleep 1; kill -STOP $(pidof qemu-ga)) >/dev/null 2>&1 &")
    time.sleep(2.0)
    t0 = time.monotonic()
    out = ok(corral, "snapshot", "create", "hung", "h1")
    took = time.monotonic() - t0
    assert "not frozen" in out and took < 40, (out, took)
    r = corral.cli("shell", "hung", "--", "sh", "-c", "kill -CONT $(pidof qemu-ga)")
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the daemon keeps asking for a thaw until the agent answers
        if any("thawed" in e.message for e in corral.client.events("hung")):
            break
        time.sleep(1.0)
    r = corral.cli("exec", "--timeout", "20", "hung", "--", "sh", "-c", "echo x > /root/a && sync && cat /root/a")
    assert r.returncode == 0 and r.stdout == "x\n", (r.stdout, r.stderr)


def test_deleting_a_snapshot_under_a_read_only_layer_of_a_running_vm(corral: CorralEnv) -> None:
    """After a restart every layer under the top is a read-only node QEMU was started with: merging into one of
    them (block-stream into an intermediate node) reopens it read-write first."""
    ok(corral, "launch", "ro")
    sums = {}
    for n in ("r1", "r2"):
        guest(corral, "ro", f"head -c 200000 /dev/urandom > /root/data; echo {n} >> /root/data; sync")
        sums[n] = guest(corral, "ro", "sha256sum /root/data").split()[0]
        ok(corral, "snapshot", "create", "ro", n)
    guest(corral, "ro", "echo now > /root/data; sync")
    ok(corral, "stop", "ro")
    ok(corral, "start", "ro")  # the chain is now image, r1, r2, top: r1 and r2 read-only nodes
    ok(corral, "snapshot", "rm", "ro", "r1")  # merged into r2's layer, which QEMU has read-only
    assert [s["name"] for s in snapshots(corral, "ro")] == ["r2"]
    assert guest(corral, "ro", "cat /root/data") == "now\n"
    ok(corral, "snapshot", "revert", "ro", "r2", "--force")
    ok(corral, "start", "ro")
    assert guest(corral, "ro", "sha256sum /root/data").split()[0] == sums["r2"]
