"""corrald killed at each named fault point (corral.faults) of every long operation on a running tiny VM, then
started again: the operation is finished or rolled back with an event saying which, the guest is usable (never
left frozen or paused), no lock is stale, and the store and the files agree (tests/faults/invariants.py)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from corral import faults
from corral.client import start_daemon
from tests.conftest import CorralEnv, guest, ok, show
from tests.faults.invariants import check_after_restart, run_killed

pytestmark = pytest.mark.vm


@dataclass(frozen=True)
class Case:
    point: str
    command: tuple[str, ...]
    kind: str | None  # the event type of the operation's recovery (None: not journaled, re-attach settles it)
    outcome: str | None  # finished or rolled back
    before: tuple[tuple[str, ...], ...] = ()  # commands run first (the daemon armed, but not on this path)
    vm: bool = True  # launch the VM f first
    #: In make test (which must stay well under 30 minutes): four points whose recovery nothing else there covers
    #: (vCPUs a snapshot paused started again, a hot-plug finished, a template VM's identity taken at re-attach, a
    #: resume undone); the reported case in test_random_kills kills a snapshot, a full clone and a backup. Every
    #: point runs in make test-faults.
    quick: bool = False
    after: Callable[[CorralEnv], None] | None = field(default=None, compare=False)


def _snapshot_there(c: CorralEnv) -> None:
    assert "s1" in ok(c, "snapshot", "ls", "f")


def _snapshot_absent(c: CorralEnv) -> None:
    assert "s1" not in ok(c, "snapshot", "ls", "f")


def _no_clone(c: CorralEnv) -> None:
    assert c.cli("show", "f2").returncode != 0


def _no_backup(c: CorralEnv) -> None:
    assert c.client.list_backups(vm="f") == []


def _no_template(c: CorralEnv) -> None:
    assert "t1" not in ok(c, "template", "ls")


def _disk_of(size: str) -> Callable[[CorralEnv], None]:
    def check(c: CorralEnv) -> None:
        listing = ok(c, "disk", "ls", "f")
        assert "data" in listing and size in listing, listing
    return check


def _launched(c: CorralEnv) -> None:
    ok(c, "start", "g")
    assert guest(c, "g", "echo up").strip() == "up"


def _own_identity(c: CorralEnv) -> None:
    """The VM launched from f's template took its own identity at the re-attach: its hostname on its disk is its
    own name, not its template source's (a boot from its disk shows it)."""
    ok(c, "start", "g")
    ok(c, "wait", "g", "--ready", "--timeout", "120")
    assert guest(c, "g", "cat /etc/hostname").strip() == "g"
    assert any("identity" in e.message and "taking it now" in e.message for e in c.client.events("g"))


MARK = ("exec", "f", "--", "sh", "-c", "echo before-suspend > /root/boot-mark; sync")


def _resumed(c: CorralEnv) -> None:
    """The interrupted resume was undone or finished: the guest goes on from its saved state (the same boot)."""
    if show(c, "f")["state"] == "suspended":
        ok(c, "start", "f")
    assert guest(c, "f", "cat /root/boot-mark").strip() == "before-suspend"


def _shared(c: CorralEnv) -> None:
    """The interrupted mount add was finished: the folder is in the VM's spec, so the next start mounts it (`mount
    ls` shows it mounted) and the guest reads it."""
    ok(c, "start", "f")
    ok(c, "wait", "f", "--ready", "--timeout", "120")
    mounts = json.loads(ok(c, "mount", "ls", "f", "--json"))
    assert [(m["guest"], m["state"]) for m in mounts] == [("/mnt/share", "mounted")], mounts
    assert guest(c, "f", "cat /mnt/share/hello.txt") == "hello\n"


def _reverted(c: CorralEnv) -> None:
    ok(c, "start", "f")
    assert guest(c, "f", "cat /root/marker 2>/dev/null || echo none").strip() == "none"


CASES = [
    Case("snapshot.after-freeze", ("snapshot", "create", "f", "s1"), "snapshot", "rolled back", after=_snapshot_absent),
    Case("snapshot.after-overlay", ("snapshot", "create", "f", "s1"), "snapshot", "finished", after=_snapshot_there),
    Case("snapshot.memory-paused", ("snapshot", "create", "f", "s1", "--memory"), "snapshot", "rolled back",
         after=_snapshot_absent, quick=True),
    Case("snapshot.before-record", ("snapshot", "create", "f", "s1", "--memory"), "snapshot", "finished",
         after=_snapshot_there),
    Case("clone.after-freeze", ("clone", "f", "f2", "--full"), "clone", "rolled back", after=_no_clone),
    Case("clone.during-copy", ("clone", "f", "f2", "--full"), "clone", "rolled back", after=_no_clone),
    Case("clone.before-record", ("clone", "f", "f2"), "clone", "rolled back", after=_no_clone),
    Case("backup.during-copy", ("backup", "create", "f"), "backup", "rolled back", after=_no_backup),
    Case("backup.before-index", ("backup", "create", "f"), "backup", "rolled back", after=_no_backup),
    Case("restore.before-disk", ("backup", "restore", "{backup}", "--to", "f2"), "restore", "rolled back",
         before=(("backup", "create", "f"),), after=_no_clone),
    Case("import.after-row", ("import", "{home}/f.tar.gz", "--name", "f2"), "import", "rolled back",
         before=(("export", "f", "{home}/f.tar.gz"),), after=_no_clone),
    Case("template.after-pause", ("template", "create", "t1", "--from", "f"), "template", "rolled back",
         after=_no_template),
    Case("export.after-freeze", ("export", "f", "{home}/f.tar.gz"), "export", "rolled back"),
    Case("revert.after-quit", ("snapshot", "revert", "f", "s0", "--force"), "revert", "finished",
         before=(("snapshot", "create", "f", "s0"), ("exec", "f", "--", "sh", "-c", "echo x > /root/marker; sync")),
         after=_reverted),
    Case("disk.after-plug", ("disk", "add", "f", "data", "--size", "64M"), "disk", "finished",
         after=_disk_of("64M"), quick=True),
    Case("mount.after-plug", ("mount", "add", "f", "{share}:/mnt/share"), "mount", "finished", after=_shared),
    Case("disk.resize.before-record", ("disk", "resize", "f", "data", "128M"), "disk-resize", "finished",
         before=(("disk", "add", "f", "data", "--size", "64M"),), after=_disk_of("128M")),
    Case("launch.after-spawn", ("launch", "g", "--memory", "128M"), None, None, vm=False, after=_launched),
    Case("suspend.during-save", ("suspend", "f"), None, None),
    Case("template-launch.before-identity", ("launch", "g", "--template", "t1"), None, None,
         before=(("template", "create", "t1", "--from", "f"),), after=_own_identity, quick=True),
    Case("resume.after-spawn", ("start", "f"), None, None, before=(MARK, ("suspend", "f")), after=_resumed,
         quick=True),
]


def _share_dir(c: CorralEnv) -> Path:
    """The host folder a case shares (``{share}``): beside the Corral home, since a folder inside it is refused."""
    return c.home.with_name(c.home.name + "-share")


def _fill(c: CorralEnv, arg: str) -> str:
    """A command's argument with ``{home}`` (the Corral home), ``{backup}`` (the newest backup's id) and ``{share}``
    (a host folder beside the home, made here) filled in."""
    if "{share}" in arg:
        share = _share_dir(c)
        share.mkdir(exist_ok=True)
        (share / "hello.txt").write_text("hello\n")
        arg = arg.replace("{share}", str(share))
    if "{backup}" in arg:
        arg = arg.replace("{backup}", c.client.list_backups(vm="f")[-1].id)
    return arg.replace("{home}", str(c.home))


#: Fault points that need more than one daemon, killed in their own tests (tests/integration/test_live_migration.py).
ELSEWHERE = {"migrate.during-mirror", "migrate.before-commit", "migrate.after-commit"}


def test_every_fault_point_has_a_case() -> None:
    assert {c.point for c in CASES} | ELSEWHERE == set(faults.POINTS)


@pytest.mark.parametrize("case", [pytest.param(c, marks=() if c.quick else pytest.mark.soak) for c in CASES],
                         ids=[c.point for c in CASES])
def test_killed_at_fault_point(corral_home: CorralEnv, case: Case) -> None:
    try:
        _killed_at(corral_home, case)
    finally:
        shutil.rmtree(_share_dir(corral_home), ignore_errors=True)


def _killed_at(c: CorralEnv, case: Case) -> None:
    assert case.point in faults.POINTS
    c.start_daemon()  # to import the image; then armed
    c.client.build_image("tiny")
    c.kill_daemon()
    start_daemon(c.settings, environ=dict(c.env, CORRAL_FAULT=case.point))  # armed: the daemon, not the CLI
    if case.vm:
        ok(c, "launch", "f", "--memory", "256M")
    for cmd in case.before:
        ok(c, *(_fill(c, a) for a in cmd))
    run_killed(c, *(_fill(c, a) for a in case.command))
    verdict = check_after_restart(c, interrupted=case.kind)
    assert verdict.outcomes == ([case.outcome] if case.outcome else []), verdict
    if case.after is not None:
        case.after(c)
    if case.vm:
        assert show(c, "f")["state"] in ("stopped", "running")
