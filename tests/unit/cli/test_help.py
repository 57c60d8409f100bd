"""Every command's --help renders: a help string with square brackets (``[ADDR:]HOST``) is rich markup unless
escaped, and a markup error there was a traceback instead of the help (`corral launch --help`)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from corral.cli.main import GROUPS, VERBS, build


def commands() -> list[list[str]]:
    out = [[verb] for verbs in VERBS.values() for verb in verbs]
    for group in GROUPS:
        out.append([group])
        app = build(group)
        sub = next(g for g in app.registered_groups if g.name == group).typer_instance
        assert sub is not None
        out.extend([group, c.name or (c.callback.__name__ if c.callback else "")] for c in sub.registered_commands)
    return out


@pytest.mark.parametrize("argv", commands(), ids=" ".join)
def test_help_renders(argv: list[str]) -> None:
    r = CliRunner().invoke(build(argv[0]), [*argv, "--help"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "Usage" in r.output
