"""`corral backup create|ls|verify|restore|prune|schedule|schedules|repo`."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from corral.backup.models import JobEvent, PruneRequest, Schedule
from corral.cli.common import EXIT_ERROR, EXIT_INVALID, api, fail, out, print_json
from corral.vm.expiry import parse_duration
from corral.vm.sizes import format_size

app = typer.Typer(help="Backups of VM disks: deduplicated, compressed, checksummed, incremental while running.",
                  no_args_is_help=True)
repo_app = typer.Typer(help="Backup repositories (directories).", no_args_is_help=True)
app.add_typer(repo_app, name="repo")

REPO_HELP = "the repository directory (default: backups/ under the Corral home, made on first use)"
STAGES = {"copy": "QEMU copying", "read": "reading the disk", "store": "storing chunks", "verify": "verifying chunks",
          "restore": "restoring chunks", "convert": "writing the qcow2 disk"}


def _repo(repo: str | None) -> str | None:
    return str(Path(repo).expanduser().absolute()) if repo else None


def _bar(title: str) -> tuple[Progress, Callable[[JobEvent], None]]:
    bar = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                   TimeElapsedColumn(), console=out, transient=True)
    task = bar.add_task(title, total=None)

    def progress(ev: JobEvent) -> None:
        bar.update(task, description=f"{title}: {STAGES.get(ev.stage, ev.stage)}", completed=ev.done,
                   total=ev.total)

    return bar, progress


def _check_id(backup: str) -> None:
    if not re.fullmatch(r"[0-9a-f]{1,32}", backup):
        fail(f"{backup!r} is not a backup id: give its hex id (or a unique prefix) from `corral backup ls`",
             EXIT_INVALID)


def _when(t: datetime) -> str:
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S")


@repo_app.command("init")
def repo_init(path: Path = typer.Argument(..., help="a new or empty directory")) -> None:
    """Make a backup repository in a directory."""
    with api() as client:
        info = client.init_backup_repo(str(path.expanduser().absolute()))
    out.print(f"backup repository ready at {info.path}")


@repo_app.command("info")
def repo_info(repo: str | None = typer.Option(None, "--repo", help=REPO_HELP),
              json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """A repository's backups, chunks and bytes stored."""
    with api() as client:
        info = client.backup_repo_info(_repo(repo))
    if json_:
        print_json(info)
        return
    out.print(f"{info.path}: {info.backups} backups, {info.chunks} chunks, {format_size(info.bytes)} stored",
              highlight=False)


@app.command("create")
def create(vm: str = typer.Argument(..., help="the VM (running, paused or stopped)"),
           repo: str | None = typer.Option(None, "--repo", help=REPO_HELP),
           full: bool = typer.Option(False, "--full", help="read the whole disk even if an incremental would do"),
           json_: bool = typer.Option(False, "--json", help="print the backup as JSON")) -> None:
    """Back up a VM's disk, running (never paused; incremental through QEMU's dirty bitmap) or stopped."""
    with api() as client:
        bar, progress = _bar(f"backup {vm}")
        with bar:
            b = client.create_backup(vm, _repo(repo), full, progress)
    if json_:
        print_json(b)
        return
    how = "only the changed blocks were read (dirty bitmap)" if b.read == "bitmap" else f"whole disk read: {b.reason}"
    out.print(f"backup [bold]{b.id}[/] of {vm} ({b.kind}): read {format_size(b.read_bytes)}, "
              f"{b.changed_chunks} chunks changed in {b.changed_regions} regions, stored {format_size(b.stored_bytes)} "
              f"({b.new_chunks} new chunks) in {b.seconds:.1f}s; {how}", highlight=False)


@app.command("ls")
def ls(vm: str | None = typer.Argument(None, help="only this VM's backups"),
       repo: str | None = typer.Option(None, "--repo", help=REPO_HELP),
       json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List the backups in a repository, oldest first."""
    with api() as client:
        backups = client.list_backups(_repo(repo), vm)
    if json_:
        print_json(backups)
        return
    if not backups:
        out.print("no backups" + (f" of {vm}" if vm else ""))
        return
    t = Table(box=None)
    for col in ("ID", "VM", "CREATED", "KIND", "READ", "DISK", "DATA", "STORED"):
        t.add_column(col)
    for b in backups:
        t.add_row(b.id, b.vm, _when(b.created), b.kind, b.read, format_size(b.virtual_size),
                  format_size(b.data_bytes), format_size(b.stored_bytes))
    out.print(t)


@app.command("verify")
def verify(backup: str | None = typer.Argument(None, help="a backup id (or a unique prefix)"),
           all_: bool = typer.Option(False, "--all", help="every backup in the repository"),
           repo: str | None = typer.Option(None, "--repo", help=REPO_HELP),
           json_: bool = typer.Option(False, "--json", help="print the report as JSON")) -> None:
    """Read every chunk of a backup (or all) and check its checksums; exit 1 naming what is corrupt or missing."""
    if (backup is None) == (not all_):
        fail("give a backup id or --all", EXIT_INVALID)
    if backup is not None:
        _check_id(backup)
    with api() as client:
        bar, progress = _bar("verify")
        with bar:
            report = client.verify_backups([backup] if backup else None, _repo(repo), progress)
    if json_:
        print_json(report)
    elif report.ok:
        out.print(f"{len(report.backups)} backup(s) ok: {report.chunks} chunks, {format_size(report.bytes)} "
                  "checked", highlight=False)
    else:
        for p in report.problems:
            what = f"chunk {p.chunk[:16]}: {p.problem}" if p.chunk else p.problem
            out.print(f"[bold red]bad[/] {what} (backups: {', '.join(p.backups)})", highlight=False)
        out.print(f"{len(report.bad_backups)} backup(s) fail verification: {', '.join(report.bad_backups)}",
                  highlight=False)
    if not report.ok:
        raise typer.Exit(EXIT_ERROR)


@app.command("restore")
def restore(backup: str = typer.Argument(..., help="a backup id (or a unique prefix)"),
            to: str | None = typer.Option(None, "--to", help="a new VM, with the backed-up spec"),
            in_place: str | None = typer.Option(None, "--in-place", help="an existing stopped VM: its disk is "
                                                "replaced once the restored disk is whole"),
            repo: str | None = typer.Option(None, "--repo", help=REPO_HELP)) -> None:
    """Restore a backup to a new VM or in place; refused (nothing created) if any chunk fails its checksum."""
    if (to is None) == (in_place is None):
        fail("give either --to NEW or --in-place VM", EXIT_INVALID)
    _check_id(backup)
    with api() as client:
        bar, progress = _bar(f"restore {backup}")
        with bar:
            r = client.restore_backup(backup, to=to, in_place=in_place, repo=_repo(repo), progress=progress)
    out.print(f"restored backup {r.backup} to VM [bold]{r.vm}[/] ({format_size(r.disk_bytes)} disk)"
              + (f"; port forwards taken by other VMs dropped: {', '.join(r.dropped_ports)}" if r.dropped_ports
                 else "") + (f"; `corral start {r.vm}`" if to else ""), highlight=False)


@app.command("prune")
def prune(vm: str = typer.Argument(..., help="whose backups"),
          keep_last: int = typer.Option(0, "--keep-last", min=0, help="keep the N newest"),
          keep_daily: int = typer.Option(0, "--keep-daily", min=0, help="keep the newest of each of the last N days"),
          keep_weekly: int = typer.Option(0, "--keep-weekly", min=0, help="keep the newest of each of the last N "
                                          "weeks"),
          dry_run: bool = typer.Option(False, "--dry-run", help="say what would be removed, remove nothing"),
          repo: str | None = typer.Option(None, "--repo", help=REPO_HELP),
          json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Remove a VM's backups that no --keep rule keeps, then every chunk no backup refers to."""
    if not (keep_last or keep_daily or keep_weekly):
        fail("say what to keep: --keep-last N, --keep-daily N and/or --keep-weekly N", EXIT_INVALID)
    with api() as client:
        r = client.prune_backups(PruneRequest(vm=vm, repo=_repo(repo), keep_last=keep_last, keep_daily=keep_daily,
                                              keep_weekly=keep_weekly, dry_run=dry_run))
    if json_:
        print_json(r)
        return
    verb = "would remove" if r.dry_run else "removed"
    out.print(f"kept {len(r.kept)} backup(s); {verb} {len(r.removed)} ({', '.join(r.removed) or 'none'}) and "
              f"{r.chunks_removed} chunk(s), {format_size(r.bytes_freed)}", highlight=False)


@app.command("schedule")
def schedule(vm: str = typer.Argument(..., help="the VM"),
             every: str | None = typer.Option(None, "--every", help="a backup every DURATION: 30m, 1h, 1d"),
             daily: str | None = typer.Option(None, "--daily", help="a backup every day at HH:MM (host local time)"),
             keep_last: int = typer.Option(0, "--keep-last", min=0, help="then prune: keep the N newest"),
             keep_daily: int = typer.Option(0, "--keep-daily", min=0, help="then prune: one per day, N days"),
             keep_weekly: int = typer.Option(0, "--keep-weekly", min=0, help="then prune: one per week, N weeks"),
             remove: bool = typer.Option(False, "--remove", help="remove the VM's schedule"),
             repo: str | None = typer.Option(None, "--repo", help=REPO_HELP)) -> None:
    """Back a VM up on a schedule, run by the daemon (one schedule per VM; setting it again replaces it)."""
    with api() as client:
        if remove:
            client.delete_backup_schedule(vm)
            out.print(f"backup schedule of {vm} removed")
            return
        if (every is None) == (daily is None):
            fail("give either --every DURATION or --daily HH:MM", EXIT_INVALID)
        seconds = None
        if every is not None:
            try:
                seconds = parse_duration(every)
            except ValueError as exc:
                fail(f"--every: {exc}", EXIT_INVALID)
        try:
            s = Schedule(vm=vm, repo=_repo(repo), every=seconds, daily_at=daily, keep_last=keep_last,
                         keep_daily=keep_daily, keep_weekly=keep_weekly)
        except ValueError:
            fail(f"--daily {daily!r} is not HH:MM (00:00 to 23:59)", EXIT_INVALID)
        s = client.set_backup_schedule(s)
    nxt = datetime.fromtimestamp(s.next_run).strftime("%Y-%m-%d %H:%M:%S") if s.next_run else "-"
    out.print(f"{vm} backed up {'every ' + every if every else 'daily at ' + str(daily)}; next at {nxt}",
              highlight=False)


@app.command("schedules")
def schedules(json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List the backup schedules, with their last run and result."""
    with api() as client:
        items = client.list_backup_schedules()
    if json_:
        print_json(items)
        return
    t = Table(box=None)
    for col in ("VM", "WHEN", "KEEP", "LAST RUN", "RESULT", "NEXT"):
        t.add_column(col)
    for s in items:
        keep = " ".join(f"{k}={v}" for k, v in (("last", s.keep_last), ("daily", s.keep_daily),
                                                 ("weekly", s.keep_weekly)) if v) or "all"
        t.add_row(s.vm, f"every {s.every:g}s" if s.every else f"daily {s.daily_at}", keep,
                  datetime.fromtimestamp(s.last_run).strftime("%Y-%m-%d %H:%M") if s.last_run else "-",
                  s.last_result or "-",
                  datetime.fromtimestamp(s.next_run).strftime("%Y-%m-%d %H:%M:%S") if s.next_run else "-")
    out.print(t)
