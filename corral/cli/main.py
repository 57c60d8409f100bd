"""The `corral` command: verbs registered from one module each."""

from __future__ import annotations

import typer

from corral.cli import (
    backup,
    balloon,
    console,
    cp,
    daemon,
    disk,
    execute,
    fleet,
    idle,
    images,
    mount,
    network,
    pool,
    port,
    portable,
    project,
    quota,
    shell,
    snapshot,
    template,
    vm,
    wait,
)

app = typer.Typer(
    name="corral", help="Corral: real QEMU virtual machines from one command.", no_args_is_help=True,
    add_completion=False, pretty_exceptions_enable=False,
)
vm.register(app)
execute.register(app)
console.register(app)
shell.register(app)
cp.register(app)
wait.register(app)
fleet.register(app)
quota.register(app)
snapshot.register(app)
portable.register(app)
balloon.register(app)
app.add_typer(images.app, name="images")
app.add_typer(daemon.app, name="daemon")
app.add_typer(port.app, name="port")
app.add_typer(disk.app, name="disk")
app.add_typer(mount.app, name="mount")
app.add_typer(network.app, name="network")
app.add_typer(quota.app, name="quota")
app.add_typer(project.app, name="project")
app.add_typer(snapshot.app, name="snapshot")
app.add_typer(backup.app, name="backup")
app.add_typer(idle.app, name="idle")
app.add_typer(template.app, name="template")
app.add_typer(pool.app, name="pool")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
