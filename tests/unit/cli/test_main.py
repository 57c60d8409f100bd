"""The `corral` entry point loads only the module of the command it runs: its tables must name exactly what the
command modules register, or a command would vanish when run on its own."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer.main

from corral.cli import main


def _names(app: typer.Typer) -> set[str]:
    return set(typer.main.get_group(app).commands)


def test_tables_name_every_command_exactly_once_per_kind() -> None:
    every = _names(main.build())
    verbs = [v for vs in main.VERBS.values() for v in vs]
    assert len(verbs) == len(set(verbs))
    assert set(verbs) | set(main.GROUPS) == every


@pytest.mark.parametrize("command", sorted({v for vs in main.VERBS.values() for v in vs} | set(main.GROUPS)))
def test_a_command_alone_is_the_same_command(command: str) -> None:
    full = typer.main.get_group(main.build()).commands[command]
    alone = _names(main.build(command))
    assert command in alone
    assert typer.main.get_group(main.build(command)).commands[command].help == full.help


def test_unknown_or_no_command_builds_everything() -> None:
    assert _names(main.build("no-such-verb")) == _names(main.build()) == _names(main.build("--help"))


def test_cp_alone_does_not_load_other_command_modules() -> None:
    code = ("import sys; from corral.cli import main; main.build('cp'); "
            "print(' '.join(m for m in sys.modules if m.startswith('corral.cli.')))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(run.stdout.split())
    assert "corral.cli.cp" in loaded
    assert not loaded & {"corral.cli.backup", "corral.cli.fleet", "corral.cli.console", "corral.cli.vm"}
