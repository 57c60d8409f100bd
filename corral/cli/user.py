"""`corral user`: the users who reach corrald over TCP (corrald --listen), each with a role and maybe a project."""

from __future__ import annotations

import sys
from datetime import datetime

import typer
from rich.table import Table

from corral.auth.models import UserCreate
from corral.cli.common import EXIT_INVALID, api, fail, out, print_json

app = typer.Typer(help="Users of the TCP API: add, ls, rm (roles admin, operator, viewer; see docs/explanation/"
                  "access.md).", no_args_is_help=True)


def read_password(stdin: bool, prompt: str = "Password") -> str:
    """The password from stdin (its first line) or a prompt (typed twice, not echoed)."""
    if stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt(prompt, hide_input=True, confirmation_prompt=True)
    if not password:
        fail("the password is empty", EXIT_INVALID)
    return password


@app.command("add")
def add(
    name: str = typer.Argument(..., help="user name"),
    role: str = typer.Option(..., "--role", help="admin, operator or viewer"),
    project: str | None = typer.Option(None, "--project", help="the one project an operator or viewer acts in "
                                       "(default: every project)"),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="read the password from stdin's first "
                                        "line instead of a prompt"),
    no_password: bool = typer.Option(False, "--no-password", help="no password: the user reaches the API with "
                                     "tokens only (`corral token create --user NAME`)"),
) -> None:
    """Add a user. The password is asked for (twice), or read from stdin with --password-stdin."""
    password = None if no_password else read_password(password_stdin)
    with api() as client:  # validated by the daemon: one place, one-line errors
        u = client.add_user(UserCreate.model_construct(name=name, role=role, project=project, password=password))
    where = f"project {u.project}" if u.project else "every project"
    out.print(f"user {u.name}: {u.role} of {where}", highlight=False)


@app.command("ls")
def ls(json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List users: role, project, whether they have a password, number of tokens."""
    with api() as client:
        users = client.list_users()
    if json_:
        print_json(users)
        return
    t = Table(box=None)
    for col in ("NAME", "ROLE", "PROJECT", "PASSWORD", "TOKENS", "CREATED"):
        t.add_column(col)
    for u in users:
        t.add_row(u.name, u.role, u.project or "*", "yes" if u.has_password else "no", str(u.tokens),
                  datetime.fromtimestamp(u.created_at).strftime("%Y-%m-%d %H:%M"))
    out.print(t, highlight=False)


@app.command("rm")
def rm(name: str = typer.Argument(..., help="user name")) -> None:
    """Remove a user and all their tokens (their sessions end at once)."""
    with api() as client:
        client.remove_user(name)
    out.print(f"user {name} removed", highlight=False)
