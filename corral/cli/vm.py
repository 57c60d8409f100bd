"""Lifecycle verbs: launch, ls, show, label, start, stop, restart, kill, pause, resume, suspend, extend, rm, logs."""

from __future__ import annotations

import secrets
import sys
import time
from datetime import datetime

import typer
from rich.table import Table

from corral.api.models import VMInfo
from corral.cli import balloon as balloon_cli
from corral.cli import idle as idle_cli
from corral.cli import images as images_cli
from corral.cli.common import EXIT_INVALID, api, fail, human_duration, out, print_json
from corral.cli.images import ARCH_HELP, build_with_progress, parse_arch
from corral.cli.mount import MOUNT_HELP, parse_mount
from corral.client import APIError, Client
from corral.pools.plan import LABEL as POOL_LABEL
from corral.vm import labels as lbl
from corral.vm.arch import host_arch, image_ref
from corral.vm.expiry import ExpiryAction, format_duration, parse_duration, parse_time
from corral.vm.sizes import format_size
from corral.vm.spec import VMSpec

STATE_STYLE = {"running": "green", "paused": "yellow", "stopped": "dim", "crashed": "red", "unknown": "magenta",
               "starting": "cyan", "stopping": "cyan", "suspending": "cyan", "suspended": "blue"}


def _spec(name: str, image: str, cpus: int, memory: str, disk: str | None, restart: str,
          ports: list[str] | None = None, networks: list[str] | None = None,
          extra: dict[str, object] | None = None) -> VMSpec:
    from pydantic import ValidationError

    try:
        return VMSpec.model_validate({"name": name, "image": image, "vcpus": cpus, "memory": memory,
                                      "disk": disk, "restart": restart, "ports": ports or [],
                                      "networks": networks or []} | (extra or {}))
    except ValidationError as exc:
        e = exc.errors()[0]
        fail(f"{'.'.join(str(x) for x in e['loc'])}: {str(e['msg']).removeprefix('Value error, ')}", EXIT_INVALID)


def _provisioning(cloud_init: str | None, ssh_keys: list[str], hostname: str | None) -> dict[str, object]:
    """The spec's cloud-init fields, files read here (the daemon never reads the user's files)."""
    from pathlib import Path

    fields: dict[str, object] = {}
    if cloud_init is not None:
        try:
            fields["cloud_init"] = Path(cloud_init).expanduser().read_text()
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read cloud-init user-data {cloud_init}: {getattr(exc, 'strerror', None) or exc}",
                 EXIT_INVALID)
    keys = []
    for k in ssh_keys:
        if k.startswith(("ssh-", "ecdsa-", "sk-")) and " " in k.strip():
            keys.append(k.strip())
            continue
        try:
            text = Path(k).expanduser().read_text()
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"--ssh-key {k}: not a public key, and not a readable file "
                 f"({getattr(exc, 'strerror', None) or exc})", EXIT_INVALID)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
        if not lines or "PRIVATE KEY" in text:
            fail(f"--ssh-key {k}: no public key in that file", EXIT_INVALID)
        keys += lines
    if keys:
        fields["ssh_keys"] = keys
    if hostname is not None:
        fields["hostname"] = hostname
    return fields


def _wait_ready(client: Client, name: str, timeout: float) -> VMInfo:
    with out.status(f"[bold]{name}[/]: booting, waiting for the guest agent...", spinner="dots"):
        return client.wait_ready(name, timeout)


def _split_command(name: str | None, rest: list[str] | None) -> tuple[str | None, list[str] | None]:
    """The VM name and the `-- ARGS` that replace an OCI image's cmd: click makes every word after ``--`` a
    positional argument, so how many there were is read from the command line itself."""
    positionals = ([name] if name is not None else []) + list(rest or [])
    n = len(sys.argv) - sys.argv.index("--") - 1 if "--" in sys.argv else 0
    before, after = positionals[: len(positionals) - n], positionals[len(positionals) - n:]
    if len(before) > 1:
        fail(f"one VM name, not {len(before)} ({' '.join(before)}): the image's arguments go after --", EXIT_INVALID)
    if n and not after:
        fail("nothing after --: give the arguments that replace the image's cmd, or leave out --", EXIT_INVALID)
    return (before[0] if before else None), (after or None)


def _report_oci(spec: VMSpec, argv: list[str], t0: float) -> None:
    out.print(f"[bold]{spec.name}[/] started in {time.monotonic() - t0:.1f}s; main process: {' '.join(argv)}\n"
              f"its output: corral logs {spec.name}; its exit code, once it ends: corral wait {spec.name} "
              "--exit-code", highlight=False, soft_wrap=True)


def launch(
    name: str | None = typer.Argument(None, help="VM name (default: a generated one)"),
    rest: list[str] | None = typer.Argument(None, help="with an OCI image, after --: arguments that replace its "
                                            "cmd (as `docker run IMAGE ARGS`)", show_default=False),
    image: str = typer.Option("tiny", "--image", "-i", help="image name: `corral images ls`"),
    oci: str | None = typer.Option(None, "--oci", help=images_cli.OCI_HELP + ", run as a VM: its entrypoint is the "
                                   "main process, beside the guest agent; the VM powers off when it exits "
                                   "(docs/explanation/oci.md)"),
    cpus: int = typer.Option(1, "--cpus", "-c", help="vCPUs"),
    memory: str = typer.Option("256M", "--memory", "-m", help="memory, e.g. 512M or 2G"),
    disk: str | None = typer.Option(None, "--disk", "-d", help="root disk size, e.g. 10G (default: image size)"),
    restart: str = typer.Option("never", "--restart", help="restart policy: never, on-failure, always"),
    timeout: float = typer.Option(300.0, help="seconds to wait for the guest agent"),
    no_wait: bool = typer.Option(False, "--no-wait", help="return once QEMU runs, without waiting for the guest"),
    publish: list[str] = typer.Option([], "--publish", "-p",
                                      help="forward a host port: \\[ADDR:]HOST:GUEST\\[/udp] (repeatable)"),
    network: list[str] = typer.Option([], "--network", help="attach to a private network (repeatable)"),
    mount: list[str] = typer.Option([], "--mount", help=MOUNT_HELP),
    cloud_init: str | None = typer.Option(None, "--cloud-init", help="cloud-init user-data FILE (images with "
                                          "cloud-init: debian-12, imported cloud images)"),
    ssh_key: list[str] = typer.Option([], "--ssh-key", help="authorize a public key: FILE or the key (repeatable)"),
    hostname: str | None = typer.Option(None, "--hostname", help="guest hostname (default: the VM name)"),
    owner: str | None = typer.Option(None, "--owner", help="who it belongs to (default: $CORRAL_OWNER, else your "
                                     "login name)"),
    project: str = typer.Option("default", "--project", help="the project it belongs to"),
    label: list[str] = typer.Option([], "--label", "-l", help="a label KEY=VALUE (repeatable)"),
    description: str = typer.Option("", "--description", help="free text"),
    ttl: str | None = typer.Option(None, "--ttl", help="time to live, e.g. 30m, 2h, 7d (default: the project's "
                                   "default TTL, if it has one: `corral project ls`)"),
    expires_at: str | None = typer.Option(None, "--expires-at", help="expire at this ISO 8601 time (UTC unless it "
                                          "has a zone), instead of --ttl"),
    on_expiry: ExpiryAction | None = typer.Option(None, "--on-expiry", help="at expiry: stop (clean power-off, "
                                                  "then kill), suspend (to disk; resumable after `corral extend`) "
                                                  "or delete (with its disks; --backup-first for a final "
                                                  "backup); default: the project's, else stop"),
    backup_first: bool = typer.Option(False, "--backup-first", help="with --on-expiry delete: take a final backup "
                                      "(default repository) before deleting; not deleted if it fails"),
    idle_suspend: str | None = typer.Option(None, "--idle-suspend", help="suspend the VM to disk once it has been "
                                            "idle this long, e.g. 30m (off: never, even if its project has a "
                                            "default); it resumes by itself on exec, shell, cp or a connection to "
                                            "a forwarded port"),
    idle_cpu: str | None = typer.Option(None, "--idle-cpu", help=idle_cli.CPU_HELP),
    idle_disk: str | None = typer.Option(None, "--idle-disk", help=idle_cli.DISK_HELP),
    idle_net: str | None = typer.Option(None, "--idle-net", help=idle_cli.NET_HELP),
    balloon: bool = typer.Option(False, "--balloon", help="a memory balloon with free page reporting: memory the "
                                 "guest frees goes back to the host, and `corral balloon` sets a live target "
                                 "(not with --template)"),
    ephemeral: bool = typer.Option(False, "--ephemeral", help="disposable: the root disk reverts to its base (the "
                                   "image, or the template's disk) at every start"),
    nested: bool = typer.Option(False, "--nested", help="nested virtualization: the guest gets the host CPU's "
                                "vmx/svm extension to run VMs of its own (KVM with the kvm_intel/kvm_amd module's "
                                "nested=1; refused under TCG)"),
    display: str = typer.Option("none", "--display", help="vnc: a virtual screen and USB tablet behind a VNC "
                                "server on a unix socket, for the web page's graphical console; none: serial only"),
    template: str | None = typer.Option(None, "--template", "-t", help="start from a template's saved state "
                                        "(`corral template ls`) instead of booting: image, cpus, memory and disk "
                                        "are the template's"),
    arch: str | None = typer.Option(None, "--arch", help=ARCH_HELP + "; another than the host's runs under TCG, "
                                    "from an image built for it (`corral images build tiny --arch aarch64`)"),
    host: str | None = typer.Option(None, "--host", help="in a cluster: run it on this host (`corral host ls`)"),
    host_label: list[str] = typer.Option([], "--host-label", help="in a cluster: only on hosts with this label "
                                         "KEY=VALUE (repeatable)"),
    strategy: str = typer.Option("spread", "--strategy", help="in a cluster: spread (the host with the most room "
                                 "left) or pack (the fullest one it fits)"),
    ha: bool = typer.Option(False, "--ha", help="in a cluster: started on another host from its newest backup in "
                            "the cluster's HA repository when its host goes down"),
) -> None:
    """Create and start a VM, then wait until its guest agent answers (images without one: --no-wait).

    With an OCI image (--oci REF, or --image of one imported), return once it started: its main process's output
    is in `corral logs NAME`, and `corral wait NAME --exit-code` waits for its exit code."""
    name, command = _split_command(name, rest)
    if oci is not None and (image != "tiny" or template is not None):
        fail("--oci names the image: leave out --image and --template", EXIT_INVALID)
    if template is not None and (image != "tiny" or cpus != 1 or memory != "256M" or disk is not None):
        fail("--image, --cpus, --memory and --disk come from the template: leave them out with --template",
             EXIT_INVALID)
    target = parse_arch(arch)
    if template is not None and target is not None:
        fail("--arch comes from the template (the architecture of the VM it was made from): leave it out with "
             "--template", EXIT_INVALID)
    if template is not None and balloon:
        fail("--balloon is not possible with --template: a template's memory is a file shared by its VMs, which "
             "a balloon would punch holes in (docs/explanation/memory.md)", EXIT_INVALID)
    if display not in ("none", "vnc"):
        fail(f"--display {display!r}: give none or vnc", EXIT_INVALID)
    if template is not None and display != "none":
        fail("--display vnc is not possible with --template: the template's saved machine has no screen",
             EXIT_INVALID)
    try:
        labels = lbl.parse_set(label)
    except ValueError as exc:
        fail(str(exc), EXIT_INVALID)
    if strategy not in ("spread", "pack"):
        fail(f"--strategy {strategy!r}: give spread or pack", EXIT_INVALID)
    try:
        host_labels = lbl.parse_set(host_label)
    except ValueError as exc:
        fail(f"--host-label: {exc}", EXIT_INVALID)
    placement = {"host": host, "host_labels": host_labels, "strategy": strategy, "ha": ha}
    expiry_fields: dict[str, object] = {}
    if ttl is not None and expires_at is not None:
        fail("give --ttl or --expires-at, not both", EXIT_INVALID)
    try:
        if ttl is not None:
            expiry_fields["ttl"] = parse_duration(ttl)
        if expires_at is not None:
            expiry_fields["expires_at"] = parse_time(expires_at)
    except ValueError as exc:
        fail(f"--{'ttl' if ttl is not None else 'expires-at'}: {exc}", EXIT_INVALID)
    if on_expiry is not None:
        expiry_fields["on_expiry"] = on_expiry
    if backup_first:
        if on_expiry != ExpiryAction.DELETE:
            fail("--backup-first goes with --on-expiry delete", EXIT_INVALID)
        expiry_fields["backup_before_delete"] = True
    if (idle := idle_cli.policy_from_flags(idle_suspend, idle_cpu, idle_disk, idle_net)) is not None:
        expiry_fields["idle"] = idle
    spec = _spec(name or f"vm-{secrets.token_hex(3)}", image, cpus, memory, disk, restart, publish, network,
                 _provisioning(cloud_init, ssh_key, hostname) | {
                     "owner": owner if owner is not None else lbl.default_owner(), "project": project,
                     "labels": labels, "description": description} | expiry_fields
                 | ({"balloon": True} if balloon else {}) | ({"ephemeral": True} if ephemeral else {})
                 | ({"arch": target} if target else {}) | ({"nested": True} if nested else {})
                 | ({"display": display} if display != "none" else {})
                 | {"mounts": [parse_mount(m) for m in mount]}
                 | ({"command": command} if command is not None else {})
                 | ({"placement": placement} if host or host_labels or strategy != "spread" or ha else {}))
    t0 = time.monotonic()
    if template is not None:
        with api() as client:
            launched = client.launch_from_template(template, spec)  # all or nothing: a failed start deletes it
            if no_wait:
                out.print(f"[bold]{spec.name}[/] started")
                return
            info = client.wait_ready(spec.name, timeout)
        addr = f", {', '.join(info.addresses)}" if info.addresses else ""
        source = f"the warm pool of template {template}" if launched.agent_ready else f"template {template}"
        out.print(f"[bold]{spec.name}[/] ready in {time.monotonic() - t0:.2f}s (from {source}, "
                  f"{info.accel}{addr})")
        return
    with api() as client:
        images = {image_ref(m.name, m.arch): m for m in client.list_images()}
        if oci is not None:
            m = images_cli.import_oci_with_progress(client, oci, None)
            spec, images[image_ref(m.name, m.arch)] = spec.model_copy(update={"image": m.name}), m
        # The host's architecture's image is built when missing; another's must be built first (the daemon's
        # error says how): a foreign build is a deliberate download of another kernel and userland.
        elif spec.arch == host_arch() and spec.image_ref not in images:
            build_with_progress(client, spec.image, arch=spec.arch)
        client.create_vm(spec)
        try:
            client.start_vm(spec.name)
        except APIError:
            client.delete_vm(spec.name, force=True)  # launch is all or nothing
            raise
        process = images[spec.image_ref].oci if spec.image_ref in images else None
        if process is not None:  # its main process may end before the agent answers: nothing to wait for
            _report_oci(spec, process.argv(spec.command), t0)
            return
        if no_wait:
            out.print(f"[bold]{spec.name}[/] started")
            return
        info = _wait_ready(client, spec.name, timeout)
    addr = f", {', '.join(info.addresses)}" if info.addresses else ""
    out.print(f"[bold]{spec.name}[/] ready in {time.monotonic() - t0:.1f}s ({info.accel}{addr})")


def format_labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def ls(
    json_: bool = typer.Option(False, "--json", help="print JSON"),
    label: list[str] = typer.Option([], "--label", "-l", help="only VMs matching KEY=VALUE, KEY!=VALUE or KEY "
                                    "(has the key); repeatable, all must match"),
    owner: str | None = typer.Option(None, "--owner", help="only this owner's VMs"),
    project: str | None = typer.Option(None, "--project", help="only this project's VMs"),
    show_labels: bool = typer.Option(False, "--show-labels", help="add a LABELS column"),
    all_: bool = typer.Option(False, "--all", "-a", help="also the members of warm pools (`corral pool ls`), "
                              "hidden by default"),
) -> None:
    """List VMs (all of them, or those matching every filter; warm pools' members with --all)."""
    try:
        lbl.parse_selector(label)  # refuse a bad selector here, with the flag's name
    except ValueError as exc:
        fail(f"--label: {exc}", EXIT_INVALID)
    with api() as client:
        vms = client.list_vms(labels=label, owner=owner, project=project)
    if not all_:
        vms = [v for v in vms if POOL_LABEL not in v.spec.labels]
    if json_:
        print_json(vms)
        return
    # ARCH only when some VM is of another architecture than the host's (like EXPIRES and IDLE below): the column
    # would otherwise repeat the host's on every row and push the table past 80 columns. --json always has it.
    foreign = any(v.spec.arch != host_arch() for v in vms)
    clustered = any(v.host for v in vms)  # HOST only in a cluster
    cols = ["NAME", *(["HOST"] if clustered else []), "STATE", "PROJECT", "OWNER", "IMAGE",
            *(["ARCH"] if foreign else []), "CPUS", "MEMORY", "DISK", "ADDRESSES", "UPTIME"]
    expiring = any(v.expires_in is not None for v in vms)  # the column only when some VM expires
    idling = any(idle_cli.column(v) != "-" for v in vms)  # the same for idle control
    t = Table(box=None)
    for col in cols + (["EXPIRES"] if expiring else []) + (["IDLE"] if idling else []) + \
            (["LABELS"] if show_labels else []):
        t.add_column(col)
    for v in vms:
        style = STATE_STYLE.get(v.state, "")
        state = f"[{style}]{v.state}[/]" if style else v.state
        row = [v.name, *([v.host] if clustered else []), state, v.spec.project, v.spec.owner or "-",
               v.spec.image, *([v.spec.arch] if foreign else []), str(v.spec.vcpus), format_size(v.spec.memory << 20),
               format_size(v.spec.disk) if v.spec.disk else "image", ", ".join(v.addresses) or "-",
               human_duration(v.uptime), *([format_expires(v)] if expiring else []),
               *([idle_cli.column(v)] if idling else [])]
        t.add_row(*row, *([format_labels(v.spec.labels)] if show_labels else []))
    out.print(t, highlight=False)


def format_expires(v: VMInfo) -> str:
    """``2h10m`` until expiry; ``!`` marks a VM inside its warning window; ``expired`` once it passed."""
    if v.expires_in is None:
        return "-"
    if v.expires_in <= 0:
        return "[red]expired[/]"
    text = f"{format_duration(v.expires_in)} ({v.spec.on_expiry or 'stop'})"
    return f"[yellow]! {text}[/]" if v.expiring else text


def label(
    name: str = typer.Argument(..., help="VM name"),
    changes: list[str] = typer.Argument(..., help="KEY=VALUE to set, KEY- to remove"),
) -> None:
    """Set (KEY=VALUE) and remove (KEY-) labels of a VM, running or stopped."""
    try:
        to_set, to_remove = lbl.parse_assignments(changes)
    except ValueError as exc:
        fail(str(exc), EXIT_INVALID)
    with api() as client:
        v = client.set_labels(name, to_set, to_remove)
    out.print(f"{name}: {format_labels(v.spec.labels)}", highlight=False)


def show(name: str, json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Show one VM: state, process, accelerator, resources, disks, addresses, last exit reason."""
    with api() as client:
        v = client.get_vm(name)
    if json_:
        print_json(v)
        return
    rows = [
        ("name", v.name), ("id", v.id),
        ("state", v.state + (f" ({v.state_reason})" if v.state_reason else "")),
        ("owner", v.spec.owner or "-"), ("project", v.spec.project), ("labels", format_labels(v.spec.labels)),
        ("description", v.spec.description or "-"),
        ("image", v.spec.image), ("arch", v.spec.arch), ("vcpus", str(v.spec.vcpus)),
        ("memory", format_size(v.spec.memory << 20)),
        ("restart policy", v.spec.restart.value), ("mac", v.mac),
        ("nested", "yes (the guest CPU has the host's vmx/svm)" if v.spec.nested else "no"),
        ("display", "vnc (graphical console: the web page)" if v.spec.display == "vnc" else "none"),
        ("pid", str(v.pid) if v.pid else "-"), ("accelerator", v.accel or "-"),
        ("uptime", human_duration(v.uptime)), ("guest agent", "ready" if v.agent_ready else "not ready"),
        ("addresses", ", ".join(v.addresses) or "-"),
        ("ports", ", ".join(f"{f.host_addr}:{f.host_port}->{f.guest_port}/{f.proto}" for f in v.spec.ports) or "-"),
        ("networks", ", ".join(v.spec.networks) or "-"),
        ("created", datetime.fromtimestamp(v.created_at).strftime("%Y-%m-%d %H:%M:%S")),
        ("last exit", v.last_exit_reason or "-"),
        *([("exit code", f"{v.exit_code} (the main process's, last run)")] if v.exit_code is not None else []),
        ("restarts", str(v.restart_count)),
        ("expires", "never" if v.spec.expires_at is None else
         f"{v.spec.expires_at:%Y-%m-%d %H:%M:%S}Z, then {v.spec.on_expiry or 'stop'} ("
         + ("expired" if (v.expires_in or 0) <= 0 else f"in {format_duration(v.expires_in or 0)}")
         + (", warned" if v.expiring else "") + ")"),
        ("idle policy", idle_cli.describe(v.idle)), ("activity", idle_cli.activity(v.idle)),
        ("balloon", balloon_cli.describe(v.balloon) if v.balloon else "on" if v.spec.balloon else "-"),
    ]
    for d in v.disks:
        backing = f", backing {d.backing} ({d.backing_format})" if d.backing else ""
        rows.append((f"disk {d.name}", f"{d.path} ({d.format}, {format_size(d.virtual_size)}{backing})"))
    width = max(len(k) for k, _ in rows)
    for k, val in rows:
        out.print(f"{k + ':':<{width + 1}} {val}", highlight=False, soft_wrap=True)


def start(name: str, timeout: float = typer.Option(300.0, help="seconds to wait for the guest agent"),
          no_wait: bool = typer.Option(False, "--no-wait", help="do not wait for the guest agent")) -> None:
    """Start a stopped VM (a suspended one resumes from its saved state)."""
    with api() as client:
        client.start_vm(name)
        if not no_wait:
            _wait_ready(client, name, timeout)
    out.print(f"{name} started")


def stop(name: str, timeout: float = typer.Option(30.0, help="seconds to wait for the guest to power off"),
         force: bool = typer.Option(True, "--force/--no-force", help="kill QEMU if the guest does not power off")
         ) -> None:
    """Power a VM off (ACPI), killing it after --timeout."""
    with api() as client:
        v = client.stop_vm(name, timeout=timeout, force=force)
    out.print(f"{name} {v.state}")


def kill(name: str) -> None:
    """Kill a VM's QEMU process at once (no guest shutdown)."""
    with api() as client:
        client.kill_vm(name)
    out.print(f"{name} killed")


def restart(name: str, hard: bool = typer.Option(False, help="reset at once instead of a clean guest reboot"),
            timeout: float = typer.Option(300.0, help="seconds to wait for the guest agent")) -> None:
    """Reboot a running VM and wait until it is ready again."""
    with api() as client, out.status(f"[bold]{name}[/]: rebooting...", spinner="dots"):
        client.restart_vm(name, hard=hard, timeout=timeout)
    out.print(f"{name} restarted")


def pause(name: str) -> None:
    """Pause a running VM's vCPUs."""
    with api() as client:
        client.pause_vm(name)
    out.print(f"{name} paused")


def resume(name: str, timeout: float = typer.Option(300.0, help="seconds to wait for the guest agent"),
           no_wait: bool = typer.Option(False, "--no-wait", help="do not wait for the guest agent")) -> None:
    """Resume a paused VM, or a suspended one from its saved state (then wait for its guest agent)."""
    with api() as client:
        was = client.get_vm(name).state
        t0 = time.monotonic()
        client.resume_vm(name)
        if was == "suspended" and not no_wait:
            client.wait_ready(name, timeout)
    out.print(f"{name} resumed" + (f" in {time.monotonic() - t0:.1f}s" if was == "suspended" else ""))


def suspend(name: str) -> None:
    """Save a VM's memory and devices to disk and end its QEMU; `corral resume` continues it where it was."""
    t0 = time.monotonic()
    with api() as client:
        client.suspend_vm(name)
    out.print(f"{name} suspended in {time.monotonic() - t0:.1f}s")


def extend(
    name: str = typer.Argument(..., help="VM name"),
    duration: str | None = typer.Argument(None, help="how much longer, e.g. 1h or 2d (from its expiry; from now "
                                          "if that has passed)"),
    to: str | None = typer.Option(None, "--to", help="expire at this ISO 8601 time instead (UTC unless it has a "
                                  "zone)"),
) -> None:
    """Push a VM's expiry out (an expired VM can then be started or resumed again)."""
    if (duration is None) == (to is None):
        fail("give a duration (`corral extend NAME 1h`) or --to ISO-TIME", EXIT_INVALID)
    try:
        by = parse_duration(duration) if duration is not None else None
        at = parse_time(to) if to is not None else None
    except ValueError as exc:
        fail(str(exc), EXIT_INVALID)
    with api() as client:
        v = client.extend_vm(name, by=by, to=at)
    assert v.spec.expires_at is not None
    out.print(f"{name} expires {v.spec.expires_at:%Y-%m-%d %H:%M:%S}Z (in {format_duration(v.expires_in or 0)}), "
              f"then {v.spec.on_expiry or 'stop'}", highlight=False)


def rm(names: list[str] = typer.Argument(..., help="VM names"),
       force: bool = typer.Option(False, "--force", "-f", help="kill running VMs first")) -> None:
    """Delete VMs and their disks (a running VM only with --force)."""
    with api() as client:
        for name in names:
            client.delete_vm(name, force=force)
            out.print(f"{name} deleted")


def logs(name: str, tail: int | None = typer.Option(None, "--tail", "-n", help="last N lines only"),
         follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new output")) -> None:
    """Print the VM's serial console output (kept even while nobody is attached)."""
    with api() as client:
        data, offset = client.logs_since(name, tail=tail)
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        while follow:  # Ctrl-C ends it
            time.sleep(0.5)
            data, offset = client.logs_since(name, offset)
            sys.stdout.buffer.write(data)
            sys.stdout.flush()


def register(app: typer.Typer) -> None:
    for fn in (launch, ls, show, label, start, stop, restart, kill, pause, resume, suspend, extend, rm, logs):
        app.command()(fn)
