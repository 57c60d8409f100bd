"""`corral sandbox run`: a sample in a throwaway VM, and what it did (docs/explanation/sandbox.md)."""

from __future__ import annotations

import base64
from pathlib import Path

import typer
from pydantic import ValidationError

from corral.cli.common import EXIT_INVALID, api, fail, out
from corral.cli.images import build_with_progress
from corral.images.builders import BUILDERS
from corral.sandbox.models import MAX_SAMPLE, NetMode, SandboxReport, SandboxRun
from corral.vm.expiry import parse_duration

app = typer.Typer(help="Run samples in throwaway VMs and report what they did (run).", no_args_is_help=True)


@app.command("run")
def run(
    sample: Path = typer.Argument(..., help="the file to run (copied into the VM)"),
    command: list[str] = typer.Argument(None, help="what to run instead of the sample itself (after --); $SAMPLE "
                                        "is the sample's path in the guest"),
    image: str | None = typer.Option(None, "--image", "-i", help="boot this image (default: tiny)"),
    template: str | None = typer.Option(None, "--template", "-t", help="start from this template's saved "
                                        "state (about a second instead of a boot); its NAT NIC is cut off"),
    timeout: str = typer.Option("5m", "--timeout", help="how long the command may run: 30s, 5m, 1h"),
    net: str = typer.Option("none", "--net", help="none (no NIC but lo), isolated (a private network, no route "
                            "out) or egress-log (isolated, every connection attempt recorded)"),
    keep: bool = typer.Option(False, "--keep", help="keep the VM, stopped, for study (default: deleted)"),
    report: Path | None = typer.Option(None, "--report", help="write the whole report here (JSON)"),
) -> None:
    """Boot a throwaway VM, copy SAMPLE in, run it (or -- CMD) for at most --timeout, destroy the VM, report."""
    try:
        mode = NetMode(net)
    except ValueError:
        fail(f"--net {net!r}: use none, isolated or egress-log", EXIT_INVALID)
    try:
        seconds = parse_duration(timeout)
    except ValueError as exc:
        fail(f"--timeout {timeout!r}: {exc}", EXIT_INVALID)
    if not sample.is_file():
        fail(f"sample {str(sample)!r} is not a file: give the path of the file to run", EXIT_INVALID)
    if sample.stat().st_size > MAX_SAMPLE:
        fail(f"sample {str(sample)!r} is larger than {MAX_SAMPLE >> 20} MiB", EXIT_INVALID)
    if report is not None and not report.parent.resolve().is_dir():
        fail(f"--report {str(report)!r}: its directory does not exist", EXIT_INVALID)
    try:
        req = SandboxRun(sample_name=sample.name, sample=base64.b64encode(sample.read_bytes()).decode(),
                         image=image, template=template, timeout=seconds, net=mode, keep=keep,
                         command=list(command or []))
    except ValidationError as exc:
        fail("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()), EXIT_INVALID)
    with api() as client:
        want = image or "tiny"
        if template is None and want in BUILDERS and want not in {m.name for m in client.list_images()}:
            build_with_progress(client, want)  # as `corral launch` does: a known image is built (or fetched) first
        with out.status(f"running [bold]{sample.name}[/] in a sandbox ({mode.value})...", spinner="dots"):
            rep = client.sandbox_run(req)
    if report is not None:
        report.write_text(rep.model_dump_json(indent=2) + "\n")
    _summary(rep, report)


def _summary(rep: SandboxReport, path: Path | None) -> None:
    end = "timed out (killed)" if rep.timed_out else f"exit {rep.exit_code}" if rep.signal is None \
        else f"killed by signal {rep.signal}"
    out.print(f"[bold]{rep.vm}[/] ({rep.source}, net {rep.net.value}): {end} after {rep.seconds.get('run', 0):.1f}s "
              f"(total {rep.seconds.get('total', 0):.1f}s); VM {'kept, stopped' if rep.kept else 'deleted'}",
              highlight=False)
    out.print(f"  stdout {rep.stdout.bytes} bytes, stderr {rep.stderr.bytes} bytes", highlight=False)
    out.print(f"  processes: {len(rep.processes)}: "
              + ", ".join(sorted({p.comm for p in rep.processes}))[:200], highlight=False)
    if rep.files is None:
        out.print(f"  files: {rep.files_note}", highlight=False)
    else:
        counts = {c: sum(1 for f in rep.files if f.change == c) for c in ("created", "modified", "deleted")}
        out.print("  files: " + ", ".join(f"{n} {c}" for c, n in counts.items()), highlight=False)
    if rep.connections is None:
        out.print(f"  connections: {rep.connections_note}", highlight=False)
    else:
        shown = sorted({f"{c.proto} {c.name or c.dst}{f':{c.port}' if c.port and c.proto != 'dns' else ''}"
                        for c in rep.connections})
        out.print(f"  connections: {len(rep.connections)} attempts, none let out: " + ", ".join(shown)[:400],
                  highlight=False)
    out.print(f"  screenshot: {rep.screenshot or 'none'}", highlight=False)
    if path is not None:
        out.print(f"  report: {path}", highlight=False)
