"""The client's connection to corrald: the HTTP client over the unix socket, errors as APIError or
DaemonUnavailable, and NDJSON streams."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import httpx

from corral.api.models import (
    API_PREFIX,
    USER_HEADER,
)
from corral.errors import CorralError
from corral.vm.labels import default_owner

if TYPE_CHECKING:
    from corral.client.remote import Remote


class APIError(CorralError):
    """The daemon answered with an error."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error = status, error


class DaemonUnavailable(CorralError):
    """The daemon is not running, or did not come up."""


@dataclass
class Download:
    """An open download (:meth:`Client.download`): ``kind`` is "file" or "tar" (a directory), ``mode`` and
    ``mtime`` those of the guest source, ``size`` the exact byte count of ``chunks``."""

    kind: str
    size: int
    mode: int
    mtime: int
    chunks: Iterator[bytes]




class Core:
    """The connection to the daemon and the calls every group of API calls is built on."""

    def __init__(self, socket: Path, timeout: float = 600.0, user: str | None = None,
                 remote: Remote | None = None) -> None:
        """``user``: who the daemon records as the actor of each request (and the owner of new VMs); default
        $CORRAL_OWNER, else the login name. With ``remote``: that daemon over HTTPS with its token instead (the
        actor is then the token's user, whatever ``user`` says)."""
        self.socket = socket
        self.timeout = timeout
        self.user = user or default_owner()
        self.remote = remote
        if remote is not None:
            self._http = httpx.Client(
                base_url=remote.url + API_PREFIX, verify=remote.ssl_context(),
                timeout=httpx.Timeout(timeout, connect=10.0),
                headers={"Authorization": f"Bearer {remote.token}"} if remote.token else {},
            )
            return
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket)), base_url="http://corral" + API_PREFIX,
            timeout=httpx.Timeout(timeout, connect=5.0), headers={USER_HEADER: self.user},
        )

    @property
    def where(self) -> str:
        return self.remote.url if self.remote is not None else str(self.socket)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------- core --
    @property
    def http(self) -> httpx.Client:
        """The HTTP client, for the modules that extend this one (corral.client.port_upload)."""
        return self._http

    def check(self, r: httpx.Response) -> httpx.Response:
        """Raise APIError for an error response (its body read)."""
        return self._check(r)

    def _check(self, r: httpx.Response) -> httpx.Response:
        if r.status_code >= 400:
            try:
                body = r.json()
                raise APIError(r.status_code, body.get("error", "Error"), body.get("message") or r.text)
            except (ValueError, AttributeError):
                raise APIError(r.status_code, "Error", r.text.strip() or r.reason_phrase) from None
        return r

    def _req(self, method: str, url: str, **kw: Any) -> httpx.Response:
        try:
            return self._check(self._http.request(method, url, **kw))
        except httpx.TransportError as exc:
            raise DaemonUnavailable(f"cannot reach corrald at {self.where}: {exc}") from exc

    def _stream(self, method: str, url: str, **kw: Any) -> Iterator[dict[str, Any]]:
        try:
            with self._http.stream(method, url, **kw) as r:
                if r.status_code >= 400:
                    r.read()
                    self._check(r)
                for line in r.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.TransportError as exc:
            raise DaemonUnavailable(f"lost the connection to corrald at {self.where}: {exc}") from exc



def _some(**params: Any) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _event_params(vm: str | None, after: int, owner: str | None, actor: str | None, type: str | None,
                  result: str | None, since: str | float | None) -> dict[str, Any]:
    params: dict[str, Any] = {"after": after}
    for k, v in (("vm", vm), ("owner", owner), ("actor", actor), ("type", type), ("result", result),
                 ("since", since)):
        if v is not None:
            params[k] = str(v)
    return params
