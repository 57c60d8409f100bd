"""Host ports: finding a free one, and checking that forwards can bind before QEMU tries."""

from __future__ import annotations

import socket

from corral.errors import Conflict
from corral.vm.spec import PortForward


def free_port(addr: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``addr`` now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


def check_free(forwards: list[PortForward], vm: str) -> None:
    """Conflict naming the first forward whose host port is taken."""
    for f in forwards:
        kind = socket.SOCK_STREAM if f.proto == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((f.host_addr, f.host_port))
            except OSError as exc:
                raise Conflict(
                    f"host port {f.host_addr}:{f.host_port}/{f.proto} for VM '{vm}' is not available "
                    f"({exc.strerror}): choose another host port"
                ) from exc
