"""The `corral` command: verbs registered from one module each.

One command loads only the module that defines it (:data:`VERBS`, :data:`GROUPS`): every `corral` run pays its
start-up, and importing all 26 command modules (the backup, fleet and console ones pull in their own models and
libraries) was over half of it, 0.2-0.3 s of the 0.47 s of `corral ls` (bench/ cp_throughput). ``--help``, no
command or an unknown one builds the whole app, so the top-level help and its errors are as before; a unit test
checks that the tables name exactly what the modules register.
"""

from __future__ import annotations

import importlib
import sys

import typer

#: Module (in corral.cli) -> the verbs its ``register(app)`` adds.
VERBS: dict[str, tuple[str, ...]] = {
    "vm": ("extend", "kill", "label", "launch", "logs", "ls", "pause", "restart", "resume", "rm", "show", "start",
           "stop", "suspend"),
    "execute": ("exec",),
    "console": ("console",),
    "shell": ("shell",),
    "cp": ("cp",),
    "wait": ("wait",),
    "fleet": ("apply", "diff", "events", "report"),
    "quota": ("capacity",),
    "snapshot": ("clone",),
    "portable": ("export", "import"),
    "balloon": ("balloon",),
    "login": ("login", "logout", "whoami"),
    "cluster": ("migrate",),
}
#: Command group -> the module whose ``app`` it is.
GROUPS: dict[str, str] = {
    "images": "images", "daemon": "daemon", "port": "port", "disk": "disk", "mount": "mount", "network": "network",
    "quota": "quota", "project": "project", "snapshot": "snapshot", "backup": "backup", "idle": "idle",
    "template": "template", "pool": "pool", "sandbox": "sandbox", "user": "user", "token": "token",
    "cluster": "cluster", "host": "host",
}


def _root() -> None:
    """Corral: real QEMU virtual machines from one command."""


def build(command: str | None = None) -> typer.Typer:
    """The app with every command, or with only ``command`` (a verb or a group) when one of the tables names it."""
    known = command in GROUPS or any(command in verbs for verbs in VERBS.values())
    app = typer.Typer(
        name="corral", help="Corral: real QEMU virtual machines from one command.", no_args_is_help=True,
        add_completion=False, pretty_exceptions_enable=False,
    )
    app.callback()(_root)  # a group even with one command in it (typer runs a lone command as the app itself)
    for module, verbs in VERBS.items():
        if not known or command in verbs:
            importlib.import_module(f"corral.cli.{module}").register(app)
    for group, module in GROUPS.items():
        if not known or command == group:
            app.add_typer(importlib.import_module(f"corral.cli.{module}").app, name=group)
    return app


def main() -> None:
    build(sys.argv[1] if len(sys.argv) > 1 else None)()


if __name__ == "__main__":
    main()
