"""`corral token`: API tokens (for scripts and CI), stored by corrald only as hashes."""

from __future__ import annotations

from datetime import datetime

import typer
from rich.table import Table

from corral.auth.models import TokenCreate
from corral.cli.common import EXIT_INVALID, api, fail, out, print_json
from corral.vm.expiry import parse_duration

app = typer.Typer(help="API tokens: create (shown once), ls, revoke.", no_args_is_help=True)


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts is not None else "never"


@app.command("create")
def create(
    user: str | None = typer.Option(None, "--user", help="whose token (another user than oneself: admins only; "
                                    "on this host's unix socket: required)"),
    ttl: str | None = typer.Option(None, "--ttl", help="lifetime, e.g. 30d or 12h (default: never expires)"),
    description: str = typer.Option("", "--description", help="what it is for"),
) -> None:
    """Create a token and print it once (only its hash is kept: it cannot be shown again)."""
    seconds = None
    if ttl is not None:
        try:
            seconds = parse_duration(ttl)
        except ValueError as exc:
            fail(f"--ttl: {exc}", EXIT_INVALID)
    with api() as client:
        tok = client.create_token(TokenCreate.model_construct(user=user, ttl=seconds, description=description))
    print(tok.token)
    typer.echo(f"token {tok.id} for {tok.user}, expires {_when(tok.expires_at)}: shown once, keep it safe", err=True)


@app.command("ls")
def ls(json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List tokens (one's own; an admin: everyone's), never their secrets."""
    with api() as client:
        tokens = client.list_tokens()
    if json_:
        print_json(tokens)
        return
    t = Table(box=None)
    for col in ("ID", "USER", "KIND", "CREATED", "EXPIRES", "DESCRIPTION"):
        t.add_column(col)
    for k in tokens:
        t.add_row(k.id, k.user, k.kind, _when(k.created_at), _when(k.expires_at), k.description)
    out.print(t, highlight=False)


@app.command("revoke")
def revoke(token_id: str = typer.Argument(..., metavar="ID", help="the token's id (`corral token ls`)")) -> None:
    """Revoke a token: requests with it are refused at once."""
    with api() as client:
        client.revoke_token(token_id)
    out.print(f"token {token_id} revoked", highlight=False)
