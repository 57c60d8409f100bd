"""Seeing the fleet: `corral report` (VMs grouped, with allocation and use) and `corral events` (who did what).
Declaring it: `corral diff -f` and `corral apply -f` (fleet files: :mod:`corral.fleet`)."""

from __future__ import annotations

import csv
import sys
import time
from datetime import datetime
from typing import Any

import typer
from rich.table import Table

from corral.api.models import EventInfo, Report
from corral.cli.common import EXIT_CONFLICT, EXIT_ERROR, EXIT_INVALID, api, fail, human_duration, out, print_json
from corral.client import Client
from corral.fleet import FLEET_LABEL
from corral.fleet.file import Fleet, FleetFileError
from corral.fleet.file import load as load_fleet
from corral.fleet.plan import Current, Plan
from corral.fleet.plan import plan as make_plan
from corral.vm import labels as lbl
from corral.vm.events import parse_since
from corral.vm.sizes import format_size

CSV_FIELDS = ["group", "name", "owner", "project", "labels", "state", "running", "created_at", "age_s",
              "last_activity", "uptime_s", "vcpus", "memory_mib", "disk_bytes", "disk_used_bytes", "rss_bytes",
              "idle_suspended"]


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
                        "" if v.rss_bytes is None else v.rss_bytes, str(v.idle_suspended).lower()])


def write_table(r: Report) -> None:
    now = r.generated_at
    by = r.by.upper()
    t = Table(box=None)
    for col in (by, "NAME", "STATE", "AGE", "ACTIVE", "UPTIME", "CPUS", "MEMORY", "RSS", "DISK", "USED"):
        t.add_column(col, no_wrap=True)
    for g in r.groups:
        for v in g.vms:
            state = f"{v.state} (idle)" if v.idle_suspended else v.state
            t.add_row(_group_name(r, g.key), v.name, state, human_duration(v.age), _ago(v.last_activity, now),
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
    """VMs grouped by owner, project or a label: age, last activity (ACTIVE: as measured by idle control, else the
    newest event), state ("suspended (idle)": by idle control), allocation
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


# ------------------------------------------------------------------------------------------------ fleet files --
EXIT_CHANGES = 8  # `corral diff --exit-code`: the plan has changes (1-7 are errors)

_FILE_OPTION = typer.Option(..., "--file", "-f", help="the fleet file (YAML): see docs/reference/fleet-file.md")


def _load(path: str) -> Fleet:
    try:
        return load_fleet(path)
    except FleetFileError as exc:
        fail(exc.message, EXIT_INVALID)


def _plan(client: Client, fleet: Fleet, prune: bool) -> Plan:
    current = [Current(v.spec, v.state, never_started=not v.last_exit_reason) for v in client.list_vms()]
    return make_plan(fleet.name, fleet.vms, current, prune=prune)


def _show(field: str, value: Any) -> str:
    if field == "labels" and isinstance(value, dict):
        return ",".join(f"{k}={v}" if v else k for k, v in sorted(value.items()) if k != FLEET_LABEL) or "(none)"
    if field == "memory":
        return f"{value}M"
    if value in ("", None, [], {}):
        return "(none)"
    if field == "cloud_init":
        return f"({len(str(value).splitlines())} lines)"
    return str(value)


def _summary(p: Plan) -> str:
    changes = p.of("change")
    restarts = sum(a.restart for a in changes)
    starts = len(p.of("start")) + sum(a.start for a in changes)
    parts = [f"{len(p.of('create'))} to create", *([f"{starts} to start"] if starts else []),
             f"{len(changes)} to change" + (f" ({restarts} restarted)" if restarts else ""),
             f"{len(p.of('delete'))} to delete", f"{len(p.of('unchanged'))} unchanged"]
    if p.conflicts:
        parts.append(f"{len(p.conflicts)} in conflict")
    return f"fleet {p.fleet}: " + ", ".join(parts)


def print_plan(p: Plan, undeclared: list[str]) -> None:
    for a in p.actions:
        if a.kind == "create" and a.spec is not None:
            s = a.spec
            out.print(f"[green]+ create[/] {a.name} ({s.image}, {s.vcpus} vCPU, {s.memory}M)", highlight=False)
        elif a.kind == "start":
            out.print(f"[green]> start[/] {a.name} ({a.reason})", highlight=False)
        elif a.kind == "change":
            out.print(f"[yellow]~ change[/] {a.name}" + (" [bold](restart)[/]" if a.restart else "")
                      + (" [bold](then start: never started)[/]" if a.start else ""), highlight=False)
            for c in a.changes:
                note = (" (restart needed)" if a.restart else " (from the next start)") if c.needs_restart else ""
                out.print(f"    {c.field}: {_show(c.field, c.old)} -> {_show(c.field, c.new)}{note}",
                          highlight=False, markup=False)
        elif a.kind == "delete":
            out.print(f"[red]- delete[/] {a.name}", highlight=False)
        elif a.kind == "conflict":
            out.print(f"[bold red]! conflict[/] {a.name}: {a.reason}", highlight=False)
            for c in a.changes:
                out.print(f"    {c.field}: {_show(c.field, c.old)} -> {_show(c.field, c.new)}", highlight=False,
                          markup=False)
    for name in undeclared:
        out.print(f"[dim]  not declared: {name} (kept; --prune deletes it)[/]", highlight=False)
    out.print(_summary(p), highlight=False)


def _undeclared(client: Client, fleet: Fleet, prune: bool) -> list[str]:
    if prune:
        return []
    declared = {s.name for s in fleet.vms}
    return sorted(v.name for v in client.list_vms(labels=[f"{FLEET_LABEL}={fleet.name}"]) if v.name not in declared)


def _plan_json(p: Plan) -> dict[str, Any]:
    return {"fleet": p.fleet, "changes": p.has_changes, "actions": [
        {"action": a.kind, "name": a.name, "restart": a.restart, "start": a.start, "reason": a.reason,
         "fields": [{"field": c.field, "old": c.old, "new": c.new, "restart_needed": c.needs_restart}
                    for c in a.changes]} for a in p.actions]}


def diff(
    file: str = _FILE_OPTION,
    prune: bool = typer.Option(False, "--prune", help="plan to delete this fleet's VMs no longer declared"),
    exit_code: bool = typer.Option(False, "--exit-code",
                                   help=f"exit {EXIT_CHANGES} when there are changes to make, 0 when none"),
    json_out: bool = typer.Option(False, "--json", help="print the plan as JSON"),
) -> None:
    """Show what `corral apply -f FILE` would do: create, change (restart or not), delete (with --prune)."""
    fleet = _load(file)
    with api() as client:
        p = _plan(client, fleet, prune)
        undeclared = _undeclared(client, fleet, prune)
    if json_out:
        print_json(_plan_json(p) | {"not_declared": undeclared})
    else:
        print_plan(p, undeclared)
    if exit_code and p.has_changes:
        raise typer.Exit(EXIT_CHANGES)


def apply(
    file: str = _FILE_OPTION,
    prune: bool = typer.Option(False, "--prune", help="delete this fleet's VMs no longer declared (never others)"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
    wait: bool = typer.Option(False, "--wait", help="wait for the guest agent of each VM created or restarted"),
    timeout: float = typer.Option(300.0, "--timeout", help="seconds to wait for each VM with --wait"),
) -> None:
    """Make the host match a fleet file: create (and start) missing VMs, change what changed (restarting running
    VMs whose vcpus or memory changed), with --prune delete the fleet's VMs no longer declared."""
    fleet = _load(file)
    with api() as client:
        p = _plan(client, fleet, prune)
        print_plan(p, _undeclared(client, fleet, prune))
        if p.conflicts:
            fail("the plan has conflicts: nothing was done", EXIT_CONFLICT)
        if not p.has_changes:
            out.print("nothing to do")
            return
        if not yes:
            if not sys.stdin.isatty():
                fail("not a terminal: pass --yes to apply the plan", EXIT_INVALID)
            if not typer.confirm("apply this plan?", default=False):
                fail("cancelled: nothing was done", EXIT_ERROR)
        booted: list[str] = []
        for a in p.actions:
            if a.kind == "delete":
                client.delete_vm(a.name, force=True)
                out.print(f"deleted {a.name}", highlight=False)
            elif a.kind == "change":
                client.update_vm(a.name, **a.update())
                if a.restart:
                    client.stop_vm(a.name)
                if a.restart or a.start:
                    client.start_vm(a.name)
                    booted.append(a.name)
                out.print(f"changed {a.name}" + (" (restarted)" if a.restart else " (started)" if a.start else ""),
                          highlight=False)
            elif a.kind == "start":
                client.start_vm(a.name)
                booted.append(a.name)
                out.print(f"started {a.name}", highlight=False)
            elif a.kind == "create" and a.spec is not None:
                client.create_vm(a.spec)
                client.start_vm(a.name)
                booted.append(a.name)
                out.print(f"created {a.name}", highlight=False)
        if wait:
            for name in booted:
                client.wait_ready(name, timeout)
                out.print(f"{name}: ready", highlight=False)
        out.print(f"applied fleet {fleet.name}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(diff)
    app.command()(apply)
    for fn in (report, events):
        app.command()(fn)
