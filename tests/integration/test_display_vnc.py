"""`corral launch --display vnc`: QEMU's VNC server on the VM's unix socket, reached through /v1/vms/NAME/vnc (the
web page's graphical console; tests/integration/test_web.py draws it in a browser). No browser here: RFB's
handshake and the screen's size through the websocket, over the daemon's unix socket (no ticket there)."""

from __future__ import annotations

import stat
import struct

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import unix_connect

from tests.conftest import CorralEnv, ok, show

pytestmark = pytest.mark.vm


def vnc(c: CorralEnv, name: str):  # type: ignore[no-untyped-def]
    return unix_connect(str(c.settings.socket), uri=f"ws://corral/v1/vms/{name}/vnc", open_timeout=10)


class Stream:
    """The websocket's binary frames as one byte stream (RFB messages do not follow frame boundaries)."""

    def __init__(self, ws) -> None:  # type: ignore[no-untyped-def]
        self.ws, self.buf = ws, b""

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += self.ws.recv(timeout=30)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def test_display_vnc_serves_rfb_on_a_unix_socket_through_the_api(corral: CorralEnv) -> None:
    ok(corral, "launch", "scr", "--display", "vnc", "--no-wait")
    assert show(corral, "scr")["spec"]["display"] == "vnc"
    sock = corral.home / "vms" / "scr" / "vnc.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode)  # a unix socket, never a TCP port
    with vnc(corral, "scr") as ws:
        rfb = Stream(ws)
        assert rfb.read(12) == b"RFB 003.008\n"
        ws.send(b"RFB 003.008\n")
        n = rfb.read(1)[0]
        types = rfb.read(n)
        assert 1 in types  # security type None: only the daemon reaches the socket
        ws.send(bytes([1]))
        assert rfb.read(4) == b"\0\0\0\0"  # SecurityResult: OK
        ws.send(bytes([1]))  # ClientInit: shared
        width, height = struct.unpack(">HH", rfb.read(4))
        assert width >= 640 and height >= 200  # the VGA screen


def test_a_vm_without_a_screen_refuses_the_graphical_console(corral: CorralEnv) -> None:
    ok(corral, "launch", "plain", "--no-wait")
    with vnc(corral, "plain") as ws, pytest.raises(ConnectionClosed) as exc:
        ws.recv(timeout=10)
    assert exc.value.rcvd is not None and exc.value.rcvd.code == 4000
    assert "has no screen" in exc.value.rcvd.reason
    r = corral.cli("launch", "bad", "--display", "sdl")
    assert r.returncode != 0 and "give none or vnc" in r.stderr
