"""`corrald --listen ADDR:PORT`: the same app over TCP with TLS, through :class:`corral.api.gate.RemoteGate`.

A second uvicorn server in the daemon's event loop, with no lifespan of its own (the unix socket's server runs the
app's start-up and shut-down) and no signal handlers (the unix socket's server handles them and stops this one
first). The socket is bound before anything starts, so a port in use fails the start with one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp

from corral.api.gate import RemoteGate
from corral.auth.service import AuthService
from corral.auth.tls import fingerprint
from corral.errors import InvalidInput
from corral.settings import parse_listen

log = logging.getLogger("corrald")


def bind(value: str) -> socket.socket:
    host, port = parse_listen(value)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128, reuse_port=False)
    except OSError as exc:
        raise InvalidInput(f"cannot listen on {value}: {exc.strerror or exc}") from exc


class _Quiet(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the unix socket's server handles the signals


class RemoteListener:
    def __init__(self, app: FastAPI, auth: AuthService, sock: socket.socket, cert: Path, key: Path,
                 inner: ASGIApp | None = None) -> None:
        config = uvicorn.Config(RemoteGate(app, lambda: auth, inner), lifespan="off", log_level="warning",
                                access_log=False, ssl_certfile=str(cert), ssl_keyfile=str(key),
                                timeout_graceful_shutdown=5, proxy_headers=False)
        self.server = _Quiet(config)
        self.sock = sock
        self.fingerprint = fingerprint(cert.read_bytes())
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        host, port = self.sock.getsockname()[:2]
        log.info("listening on https://%s:%d (certificate SHA-256 %s)", host, port, self.fingerprint)
        self._task = asyncio.create_task(self.server.serve(sockets=[self.sock]), name="corral-tcp-listener")

    async def stop(self) -> None:
        if self._task is None:
            return
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            await self._task
        self.sock.close()
