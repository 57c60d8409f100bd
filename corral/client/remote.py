"""Which corrald the client talks to, when not this host's over the unix socket: a remote one over HTTPS with a
token.

Precedence: CORRAL_URL with CORRAL_TOKEN (the certificate: CORRAL_CA, else the one `corral login` saved for that
URL, else the system's CAs), then the file `corral login` wrote (CORRAL_REMOTE_CONFIG, default
~/.config/corral/remote.json, mode 0600: it holds a token), else none: the unix socket, as before. Reading it costs a
stat and, when present, one small JSON file: the local path does not get slower.
"""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import asdict, dataclass
from pathlib import Path

from corral.errors import InvalidInput

CONFIG_ENV = "CORRAL_REMOTE_CONFIG"


@dataclass(frozen=True)
class Remote:
    url: str  # https://host:port (no /v1)
    token: str
    cert_pem: str | None = None  # the pinned certificate (trust on first use), else None
    ca_file: str | None = None  # a CA bundle to verify the server with, else None (with no pin: the system's)
    user: str = ""

    def ssl_context(self) -> ssl.SSLContext | bool:
        if self.cert_pem:
            ctx = ssl.create_default_context(cadata=self.cert_pem)
            ctx.check_hostname = False  # pinned: only this very certificate verifies, whatever name it was reached by
            return ctx
        if self.ca_file:
            return ssl.create_default_context(cafile=self.ca_file)
        return True


def config_path() -> Path:
    given = os.environ.get(CONFIG_ENV)
    if given:
        return Path(given)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "corral" / "remote.json"


def load_saved(path: Path | None = None) -> Remote | None:
    path = path or config_path()
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc} (`corral logout` removes it)") from exc
    try:
        return Remote(url=doc["url"], token=doc["token"], cert_pem=doc.get("cert_pem"), ca_file=doc.get("ca_file"),
                      user=doc.get("user", ""))
    except (KeyError, TypeError) as exc:
        raise InvalidInput(f"{path} is not a Corral remote configuration (`corral logout` removes it)") from exc


def save(remote: Remote, path: Path | None = None) -> Path:
    """Write the configuration with mode 0600 from the first byte (it holds a token)."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(remote), f, indent=2)
    os.replace(tmp, path)
    return path


def forget(path: Path | None = None) -> bool:
    path = path or config_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def selected() -> Remote | None:
    """The remote the client is to use, or None for the unix socket."""
    url, token = os.environ.get("CORRAL_URL"), os.environ.get("CORRAL_TOKEN")
    if url or token:
        if not (url and token):
            raise InvalidInput("set both CORRAL_URL and CORRAL_TOKEN (or neither: then `corral login`'s remote, "
                               "else this host's daemon)")
        saved = load_saved()
        pin = saved.cert_pem if saved is not None and saved.url == normal_url(url) else None
        return Remote(url=normal_url(url), token=token, cert_pem=pin, ca_file=os.environ.get("CORRAL_CA") or None)
    if not config_path().exists():
        return None
    return load_saved()


def normal_url(url: str) -> str:
    """https://host:port, checked: the API is only ever served over TLS."""
    url = url.strip().rstrip("/").removesuffix("/v1")
    if not url.startswith("https://") or len(url) <= len("https://"):
        raise InvalidInput(f"{url!r} is not an https:// URL (corrald --listen serves TLS only)")
    return url
