"""The `corral` command: verbs registered from one module each."""

from __future__ import annotations

import typer

from corral.cli import console, daemon, execute, images, vm

app = typer.Typer(
    name="corral", help="Corral: real QEMU virtual machines from one command.", no_args_is_help=True,
    add_completion=False, pretty_exceptions_enable=False,
)
vm.register(app)
execute.register(app)
console.register(app)
app.add_typer(images.app, name="images")
app.add_typer(daemon.app, name="daemon")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
