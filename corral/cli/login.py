"""`corral login URL`, `corral logout`, `corral whoami`: talk to a remote corrald over HTTPS.

The server's certificate is trusted on first use: its SHA-256 fingerprint is shown and confirmed (a prompt, or
``--yes``, or ``--fingerprint`` to say which one is expected), then kept with the URL and the token in the client's
configuration (corral.client.remote); or it is verified against ``--ca FILE``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import urlsplit

import typer

from corral.cli.common import EXIT_DAEMON, EXIT_INVALID, api, err, fail, out


def _norm_fp(fp: str) -> str:
    return fp.replace(":", "").strip().upper()


def login(
    url: str = typer.Argument(..., help="the remote corrald, e.g. https://host:8443"),
    user: str | None = typer.Option(None, "--user", "-u", help="user name (default: the login name)"),
    token: str | None = typer.Option(None, "--token", help="log in with this API token instead of a password"),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="read the password from stdin"),
    ca: str | None = typer.Option(None, "--ca", help="verify the server against this CA bundle (no pinning)"),
    fingerprint: str | None = typer.Option(None, "--fingerprint", help="the server certificate's expected "
                                           "SHA-256 fingerprint: anything else is refused"),
    yes: bool = typer.Option(False, "--yes", "-y", help="trust the certificate shown without asking"),
) -> None:
    """Log in to a remote corrald: later commands talk to it (until `corral logout`)."""
    from corral.auth import tls
    from corral.client import APIError, Client, DaemonUnavailable
    from corral.client import remote as remotes
    from corral.errors import CorralError
    from corral.vm.labels import default_owner

    try:
        base = remotes.normal_url(url)
    except CorralError as exc:
        fail(exc.message, EXIT_INVALID)
    parts = urlsplit(base)
    host, port = parts.hostname or "", parts.port or 443
    pin: str | None = None
    if ca is None:
        try:
            pem = tls.fetch_certificate(host, port)
        except (OSError, CorralError) as exc:
            fail(f"cannot reach {base}: {exc}", EXIT_DAEMON)
        fp = tls.fingerprint(pem)
        if fingerprint is not None:
            if _norm_fp(fingerprint) != _norm_fp(fp):
                fail(f"the certificate of {base} has fingerprint {fp}, not the expected {fingerprint}: refused")
        elif not yes:
            err.print(f"The certificate of {base} has SHA-256 fingerprint\n  {fp}", highlight=False)
            if not sys.stdin.isatty() or not typer.confirm("Trust it?", default=False):
                fail("certificate not trusted: compare its fingerprint with the one corrald logged at start "
                     "(corrald.log in its home), then give --yes or --fingerprint")
        pin = pem.decode()
    if token is None:
        name = user or default_owner()
        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = typer.prompt(f"Password for {name}", hide_input=True)
        probe = remotes.Remote(url=base, token="", cert_pem=pin, ca_file=ca)
        try:
            with Client(Path(base), remote=probe) as c:
                session = c.login(name, password)
        except APIError as exc:
            fail(exc.message, 1)
        except DaemonUnavailable as exc:
            fail(exc.message, EXIT_DAEMON)
        token, user = session.token, session.user
    chosen = remotes.Remote(url=base, token=token, cert_pem=pin, ca_file=ca, user=user or "")
    try:
        with Client(Path(base), remote=chosen) as c:
            me = c.whoami()
    except APIError as exc:
        fail(exc.message, 1)
    except DaemonUnavailable as exc:
        fail(exc.message, EXIT_DAEMON)
    path = remotes.save(remotes.Remote(url=base, token=token, cert_pem=pin, ca_file=ca, user=me.user))
    where = f"project {me.project}" if me.project else "every project"
    out.print(f"logged in to {base} as {me.user} ({me.role} of {where}); saved in {path}", highlight=False)


def logout() -> None:
    """Forget the remote corrald (and its token): commands talk to this host's daemon again."""
    from corral.client import remote as remotes

    path = remotes.config_path()
    out.print("logged out" if remotes.forget(path) else f"not logged in ({path} does not exist)", highlight=False)


def whoami() -> None:
    """Who the daemon takes you for: on the unix socket the local root, remotely the token's user."""
    with api() as client:
        me = client.whoami()
    out.print(f"{me.user}: {me.role} of {'project ' + me.project if me.project else 'every project'}",
              highlight=False)


def register(app: typer.Typer) -> None:
    app.command("login")(login)
    app.command("logout")(logout)
    app.command("whoami")(whoami)
