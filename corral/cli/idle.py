"""`corral idle`: a VM's idle policy (set, off, reset) and the idle state of VMs (ls). The same thresholds are
`corral launch --idle-*` and `corral project set --idle-*` options; see docs/explanation/idle.md."""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.table import Table

from corral.api.models import IdlePolicy, IdleStatus, VMInfo
from corral.cli.common import EXIT_INVALID, api, fail, human_duration, out, print_json
from corral.idle.policy import format_rate

app = typer.Typer(help="Idle control: suspend VMs that do nothing, resume them when needed (set, off, reset, ls).",
                  no_args_is_help=True)

CPU_HELP = "CPU under this share of the VM's vCPUs counts as idle, e.g. 5% (default 5%)"
DISK_HELP = "disk I/O under this rate counts as idle, e.g. 64K/s (default 64K/s)"
NET_HELP = "network traffic under this rate counts as idle, e.g. 16K/s (default 16K/s)"


def policy_from_flags(after: str | None, cpu: str | None, disk: str | None, net: str | None,
                      flag: str = "--idle-suspend", prefix: str = "--idle-") -> IdlePolicy | None:
    """The policy the options give (None when none was given); one line and exit 2 for a bad one."""
    from pydantic import ValidationError

    if after is None:
        if any(v is not None for v in (cpu, disk, net)):
            fail(f"the {prefix}cpu/{prefix}disk/{prefix}net thresholds need {flag} (how long idle before the VM "
                 "is suspended, e.g. 30m)", EXIT_INVALID)
        return None
    fields: dict[str, Any] = {"suspend_after": after}
    fields |= {k: v for k, v in (("cpu", cpu), ("disk", disk), ("net", net)) if v is not None}
    try:
        return IdlePolicy.model_validate(fields)
    except ValidationError as exc:
        e = exc.errors()[0]
        name = str(e["loc"][0]) if e["loc"] else "suspend_after"
        option = flag if name == "suspend_after" else f"{prefix}{name}"
        fail(f"{option}: {str(e['msg']).removeprefix('Value error, ')}", EXIT_INVALID)


def describe(st: IdleStatus | None) -> str:
    """`corral show`'s idle line: the policy and where it comes from."""
    if st is None or st.policy is None:
        return "none"
    return st.policy.describe() + (" (from project)" if st.source == "project" else "")


def column(v: VMInfo) -> str:
    """`corral ls`'s IDLE column: quiet time so far against the window, or why it is suspended."""
    st = v.idle
    if st is None:
        return "-"
    if st.suspended_by_idle:
        return "[blue]suspended[/]" + (" (wakes)" if st.auto_resume else "")
    if st.auto_resume:
        return "wakes on use"
    if st.policy is None or st.policy.suspend_after is None:
        return "-"
    if v.state == "running" and st.quiet_for is not None:
        return f"quiet {human_duration(st.quiet_for)}/{human_duration(st.policy.suspend_after)}"
    return f"after {human_duration(st.policy.suspend_after)}"


def activity(st: IdleStatus | None) -> str:
    """`corral show`'s activity line: the last interval's rates and the last activity."""
    if st is None:
        return "-"
    parts = []
    if st.cpu is not None or st.disk is not None or st.net is not None:
        parts.append(f"cpu {'?' if st.cpu is None else f'{st.cpu:.1f}%'}, disk "
                     f"{'?' if st.disk is None else format_rate(st.disk)}, net "
                     f"{'?' if st.net is None else format_rate(st.net)}")
    if st.last_active is not None:
        parts.append(f"last active {human_duration(time.time() - st.last_active)} ago")
    if st.held_ports:
        parts.append(f"ports held: {', '.join(st.held_ports)}")
    return "; ".join(parts) or "-"


@app.command("set")
def set_(
    name: str = typer.Argument(..., help="VM name"),
    after: str = typer.Argument(..., help="how long the VM must stay idle before it is suspended, e.g. 30m or 1h"),
    cpu: str | None = typer.Option(None, "--cpu", help=CPU_HELP),
    disk: str | None = typer.Option(None, "--disk", help=DISK_HELP),
    net: str | None = typer.Option(None, "--net", help=NET_HELP),
) -> None:
    """Give a VM its own idle policy: suspended to disk after AFTER idle, resumed when it is needed."""
    policy = policy_from_flags(after, cpu, disk, net, flag="AFTER", prefix="--")
    with api() as client:
        v = client.set_idle(name, policy)
    out.print(f"{name}: idle policy {describe(v.idle)}", highlight=False)


@app.command("off")
def off(name: str = typer.Argument(..., help="VM name")) -> None:
    """Turn idle control off for a VM (even if its project has a default policy)."""
    with api() as client:
        client.set_idle(name, IdlePolicy(suspend_after=None))
    out.print(f"{name}: idle control off", highlight=False)


@app.command("reset")
def reset(name: str = typer.Argument(..., help="VM name")) -> None:
    """Drop a VM's own idle policy: its project's default applies (`corral project ls`)."""
    with api() as client:
        v = client.set_idle(name, None)
    out.print(f"{name}: idle policy {describe(v.idle)}", highlight=False)


@app.command("ls")
def ls(json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """VMs with an idle policy or suspended by one: policy, activity, last activity."""
    with api() as client:
        vms = [v for v in client.list_vms() if v.idle is not None and (v.idle.policy is not None
                                                                          or v.idle.suspended_by_idle)]
    if json_:
        print_json([{"name": v.name, "state": v.state, "idle": v.idle.model_dump(mode="json") if v.idle else None}
                    for v in vms])
        return
    t = Table(box=None)
    for col in ("NAME", "STATE", "IDLE", "POLICY", "ACTIVITY"):
        t.add_column(col)
    for v in vms:
        t.add_row(v.name, v.state, column(v), describe(v.idle), activity(v.idle))
    out.print(t, highlight=False)
