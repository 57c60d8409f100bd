"""`corral cluster`: make this host the first member of a cluster, or join one, and show it (the hosts: `corral
host`). See docs/explanation/cluster.md."""

from __future__ import annotations

import typer

from corral.cli.common import EXIT_INVALID, api, fail, out, print_json
from corral.cluster.models import ClusterInit, ClusterJoin, HostRecord
from corral.vm.sizes import format_size

app = typer.Typer(help="A cluster of hosts on etcd: init (the first host), join (the others), show.",
                  no_args_is_help=True)

NAME = typer.Option(None, "--name", help="this host's name in the cluster (default: its hostname)")
LABEL = typer.Option([], "--label", "-l", help="a label of this host, KEY=VALUE (repeatable): for --host-label")


def _labels(items: list[str]) -> dict[str, str]:
    out_: dict[str, str] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            fail(f"--label {item!r} is not KEY=VALUE", EXIT_INVALID)
        out_[k] = v
    return out_


def _joined(h: HostRecord, verb: str) -> None:
    out.print(f"host [bold]{h.name}[/] {verb} ({h.address}, {h.cpus} CPUs, {format_size(h.memory_mib << 20)})",
              highlight=False)


@app.command("init")
def init(
    etcd: str | None = typer.Option(None, "--etcd", help="use this etcd (http://HOST:2379) instead of starting one "
                                    "here"),
    name: str | None = NAME,
    label: list[str] = LABEL,
    ha_repo: str | None = typer.Option(None, "--ha-repo", help="the backup repository every host sees (an "
                                       "absolute path to a shared directory): HA VMs are restored from it"),
) -> None:
    """Make this host the first member of a new cluster: starts etcd here (Debian's etcd-server) unless --etcd
    names one. corrald must listen on an address the other hosts reach (`corrald --listen IP:PORT`)."""
    with api() as client, out.status("starting the cluster...", spinner="dots"):
        h = client.cluster_init(ClusterInit(etcd=etcd, name=name, labels=_labels(label), ha_repo=ha_repo))
        info = client.cluster()
    _joined(h, "created the cluster")
    out.print(f"other hosts join with: corral cluster join {info.etcd}", highlight=False)


@app.command("join")
def join(
    etcd: str = typer.Argument(..., help="the cluster's etcd, as `corral cluster init` printed it"),
    name: str | None = NAME,
    label: list[str] = LABEL,
) -> None:
    """Make this host a member of an existing cluster."""
    with api() as client, out.status("joining the cluster...", spinner="dots"):
        h = client.cluster_join(ClusterJoin(etcd=etcd, name=name, labels=_labels(label)))
    _joined(h, "joined the cluster")


@app.command("show")
def show(json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """This host's cluster: its name in it, its etcd, and the hosts."""
    with api() as client:
        info = client.cluster()
    if json_:
        print_json(info)
        return
    if not info.name:
        out.print("this host is in no cluster: `corral cluster init`, or `corral cluster join ETCD`")
        return
    out.print(f"host {info.name} of the cluster on etcd {info.etcd}: {len(info.hosts)} hosts; HA repository: "
              f"{info.settings.ha_repo or 'none'}", highlight=False)


def migrate(
    name: str = typer.Argument(..., help="a running VM, on any host of the cluster"),
    to: str | None = typer.Option(None, "--to", help="the host to move it to (default: where the scheduler puts it)"),
    timeout: float = typer.Option(600.0, "--timeout", help="seconds for its disks and memory to move"),
) -> None:
    """Move a running VM live to another host: its disks are mirrored over NBD and its memory sent over TCP while it
    runs, then it pauses for a moment and continues there, with its id, MAC, forwards and data. If anything fails it
    runs on where it was, and nothing is left on the other host."""
    with api() as client, out.status(f"moving [bold]{name}[/] live{f' to {to}' if to else ''}...", spinner="dots"):
        r = client.move_vm(name, to, timeout)
    out.print(f"[bold]{name}[/] now runs on {r.target}: moved in {r.seconds:.1f}s, paused {r.downtime_ms} ms "
              f"({format_size(r.disk_bytes)} of disk, {format_size(r.ram_bytes)} of memory)")


def register(app_: typer.Typer) -> None:
    app_.command()(migrate)
