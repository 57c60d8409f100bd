"""Talking to another member's corrald: its TLS listener, its certificate pinned from its host record, and the
cluster's secret as the bearer token, with the principal the request is for (the origin host authenticated it; the
peer's gate checks the policy again for that principal, so a forwarded request can do no more than a direct one)."""

from __future__ import annotations

import hmac
import ssl
from dataclasses import dataclass

import httpx

from corral.auth.principal import Principal
from corral.cluster.models import HostRecord

#: A peer's bearer token: this prefix, then the cluster's secret.
TOKEN_PREFIX = "corral-peer."
#: Who a forwarded request is for: ``NAME:ROLE:PROJECT`` (project empty: every project).
PRINCIPAL_HEADER = "X-Corral-Principal"
#: Set on a request one host forwards to another: it is served where it lands, never forwarded again.
FORWARDED_HEADER = "X-Corral-Forwarded"


def peer_token(secret: str) -> str:
    return TOKEN_PREFIX + secret


def is_peer_token(token: str, secret: str | None) -> bool:
    return bool(secret) and hmac.compare_digest(token.encode(), peer_token(secret or "").encode())


def principal_header(p: Principal) -> str:
    return f"{p.name}:{p.role}:{p.project or ''}"


def parse_principal(value: str | None) -> Principal:
    """The principal a peer forwards for; an absent or bad header is the cluster itself, as an admin."""
    if value:
        name, _, rest = value.partition(":")
        role, _, project = rest.partition(":")
        if name and role in ("admin", "operator", "viewer"):
            return Principal(name, role, project or None)  # type: ignore[arg-type]
    return Principal("cluster", "admin", None)


def ssl_context(host: HostRecord) -> ssl.SSLContext:
    """Only the certificate the host published verifies (pinned), whatever address it is reached by."""
    ctx = ssl.create_default_context(cadata=host.cert_pem)
    ctx.check_hostname = False
    return ctx


def client(host: HostRecord, secret: str, principal: Principal | None = None,
           timeout: float = 30.0) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {peer_token(secret)}", FORWARDED_HEADER: "1"}
    if principal is not None:
        headers[PRINCIPAL_HEADER] = principal_header(principal)
    return httpx.AsyncClient(base_url=host.address, verify=ssl_context(host), headers=headers,
                             timeout=httpx.Timeout(timeout, connect=5.0))


@dataclass(frozen=True)
class PeerTarget:
    """Another member as the target of a live migration (corral.migration.outgoing.Target): its listener, the
    cluster's peer token, its pinned certificate."""

    host: HostRecord
    secret: str

    @property
    def url(self) -> str:
        return self.host.address

    @property
    def token(self) -> str:
        return peer_token(self.secret)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl_context(self.host)
