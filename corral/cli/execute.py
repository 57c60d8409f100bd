"""`corral exec VM -- CMD...`: the guest's output streamed back, its exit code returned as ours."""

from __future__ import annotations

import base64
import sys

import typer

from corral.cli.common import EXIT_ENGINE, api, exit_code_for, fail, parse_env

#: Exit code when --timeout killed the command (as coreutils' timeout).
EXIT_TIMEOUT = 124


def exec_(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="VM name"),
    command: list[str] = typer.Argument(..., help="command and arguments (after --)"),
    env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE, repeatable"),
    cwd: str | None = typer.Option(None, "--cwd", "-w", help="working directory in the guest"),
    timeout: float | None = typer.Option(None, "--timeout", "-t", help="kill the command after N seconds"),
    no_stdin: bool = typer.Option(False, "--no-stdin", help="do not pass this terminal's stdin"),
) -> None:
    """Run a command in the guest through its guest agent."""
    stdin: bytes | None = None
    if not no_stdin and not sys.stdin.isatty():
        stdin = sys.stdin.buffer.read()
    code: int | None = None
    with api() as client:
        for chunk in client.exec_stream(name, command, env=parse_env(env) or None, cwd=cwd, stdin=stdin,
                                        timeout=timeout):
            if chunk.kind in ("stdout", "stderr"):
                stream = sys.stdout.buffer if chunk.kind == "stdout" else sys.stderr.buffer
                stream.write(base64.b64decode(chunk.data_b64 or ""))
                stream.flush()
            elif chunk.kind == "error":
                fail(chunk.message or "exec failed", exit_code_for(chunk.error or "", EXIT_ENGINE))
            elif chunk.kind == "exit":
                if chunk.timed_out:
                    print(f"error: command timed out after {timeout}s and was killed", file=sys.stderr)
                    code = EXIT_TIMEOUT
                elif chunk.signal:
                    code = 128 + chunk.signal
                else:
                    code = chunk.exit_code if chunk.exit_code is not None else 1
    raise typer.Exit(code if code is not None else EXIT_ENGINE)


def register(app: typer.Typer) -> None:
    # Options may stand anywhere before `--`; everything after `--` is the guest command, dashes and all.
    app.command("exec")(exec_)


