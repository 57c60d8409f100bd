"""Seeing the fleet: `corral report` (VMs grouped, with allocation and use) and `corral events` (who did what)."""

from __future__ import annotations

import csv
import sys
import time
from datetime import datetime

import typer
from rich.table import Table

from corral.api.models import EventInfo, Report
from corral.cli.common import EXIT_INVALID, api, fail, human_duration, out, print_json
from corral.vm import labels as lbl
from corral.vm.events import parse_since
from corral.vm.sizes import format_size

CSV_FIELDS = ["group", "name", "owner", "project", "labels", "state", "running", "created_at", "age_s",
              "last_activity", "uptime_s", "vcpus", "memory_mib", "disk_bytes", "disk_used_bytes", "rss_bytes"]


def _size(n: int | None) -> str:
    return format_size(n) if n else "-"


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _ago(ts: float | None, now: float) -> str:
    return f"{human_duration(now - ts)} ago" if ts else "-"


def _group_name(r: Report, key: str | None) -> str:
    if key is not None:
        return key
    return f"(no {r.by.removeprefix('label:')})" if r.by.startswith("label:") else "-"


def _iso(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds") if ts else ""


def write_csv(r: Report) -> None:
    """One line per VM, its group first (totals are a sum away, and JSON has them)."""
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for g in r.groups:
        for v in g.vms:
            w.writerow([g.key if g.key is not None else "", v.name, v.owner, v.project,
                        ",".join(f"{k}={val}" for k, val in sorted(v.labels.items())), v.state,
                        str(v.running).lower(), _iso(v.created_at), int(v.age), _iso(v.last_activity),
                        "" if v.uptime is None else int(v.uptime), v.vcpus, v.memory_mib,
                        "" if v.disk_bytes is None else v.disk_bytes,
                        "" if v.disk_used_bytes is None else v.disk_used_bytes,
                        "" if v.rss_bytes is None else v.rss_bytes])


def write_table(r: Report) -> None:
    now = r.generated_at
    by = r.by.upper()
    t = Table(box=None)
    for col in (by, "NAME", "STATE", "AGE", "ACTIVE", "UPTIME", "CPUS", "MEMORY", "RSS", "DISK", "USED"):
        t.add_column(col, no_wrap=True)
    for g in r.groups:
        for v in g.vms:
            t.add_row(_group_name(r, g.key), v.name, v.state, human_duration(v.age), _ago(v.last_activity, now),
                      human_duration(v.uptime), str(v.vcpus), format_size(v.memory_mib << 20), _size(v.rss_bytes),
                      _size(v.disk_bytes), _size(v.disk_used_bytes))
        tt = g.totals
        t.add_row(f"[bold]{_group_name(r, g.key)}[/]", f"[bold]{tt.vms} VMs[/]", f"{tt.running} up", "", "",
                  "", str(tt.vcpus), format_size(tt.memory_mib << 20), _size(tt.rss_bytes), _size(tt.disk_bytes),
                  _size(tt.disk_used_bytes), end_section=True)
    tt = r.totals
    t.add_row("[bold]all[/]", f"[bold]{tt.vms} VMs[/]", f"{tt.running} up", "", "", "", str(tt.vcpus),
              format_size(tt.memory_mib << 20), _size(tt.rss_bytes), _size(tt.disk_bytes), _size(tt.disk_used_bytes))
    out.print(t, highlight=False)


def report(
    by: str = typer.Option("owner", "--by", help="group by owner, project or label:KEY"),
    format: str = typer.Option("table", "--format", help="table, json or csv"),
    label: list[str] = typer.Option([], "--label", "-l", help="only VMs matching this label selector (repeatable)"),
    owner: str | None = typer.Option(None, "--owner", help="only this owner's VMs"),
    project: str | None = typer.Option(None, "--project", help="only this project's VMs"),
) -> None:
    """VMs grouped by owner, project or a label: age, last activity (ACTIVE: the newest event), state, allocation
    (CPUS, MEMORY, DISK) and use (UPTIME, the QEMU process's RSS, the disk's USED bytes), with totals."""
    if format not in ("table", "json", "csv"):
        fail(f"--format {format!r}: use table, json or csv", EXIT_INVALID)
    try:
        lbl.parse_selector(label)
    except ValueError as exc:
        fail(f"--label: {exc}", EXIT_INVALID)
    with api() as client:
        r = client.report(by=by, labels=label, owner=owner, project=project)
    if format == "json":
        print_json(r)
    elif format == "csv":
        write_csv(r)
    else:
        write_table(r)


def _print_event(e: EventInfo, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(e.model_dump_json() + "\n")
    else:
        result = "" if e.result == "ok" else f" [{e.result}]"
        sys.stdout.write(f"{_when(e.ts)}  {e.vm or '-':<14} {e.type:<10} {e.actor or '-':<10}{result} "
                         f"{e.message}\n")
    sys.stdout.flush()


def events(
    vm: str | None = typer.Option(None, "--vm", help="only this VM's events"),
    owner: str | None = typer.Option(None, "--owner", help="only events of VMs this user owns"),
    actor: str | None = typer.Option(None, "--actor", help="only what this user did (corrald: the daemon)"),
    type: str | None = typer.Option(None, "--type", help="only this type: state, create, start, label, ..."),
    errors: bool = typer.Option(False, "--errors", help="only failed operations"),
    since: str | None = typer.Option(None, "--since", help="a duration ago (10m, 2h), an ISO time or a Unix time"),
    limit: int = typer.Option(100, "--limit", "-n", help="the last N matching events (without --follow)"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing events as they happen"),
    json_: bool = typer.Option(False, "--json", help="JSON (one object per line with --follow)"),
) -> None:
    """The event log: who did what, when, and the result. With --follow, streamed as it happens (Ctrl-C ends)."""
    if since is not None:
        try:
            parse_since(since, time.time())
        except ValueError as exc:
            fail(str(exc), EXIT_INVALID)
    result = "error" if errors else None
    with api() as client:
        if not follow:
            found = client.events(vm, owner=owner, actor=actor, type=type, result=result, since=since, limit=limit,
                                  newest=True)
            if json_:
                print_json(found)
            else:
                for e in found:
                    _print_event(e, False)
            return
        try:
            for e in client.follow_events(vm, owner=owner, actor=actor, type=type, result=result, since=since):
                _print_event(e, json_)
        except KeyboardInterrupt:
            return


def register(app: typer.Typer) -> None:
    for fn in (report, events):
        app.command()(fn)
