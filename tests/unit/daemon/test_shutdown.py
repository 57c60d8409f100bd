"""A daemon whose shut-down hangs still exits: the watchdog armed by SIGTERM ends it after the grace period."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = """
import asyncio, contextlib, socket, sys
import uvicorn
from fastapi import FastAPI
from corral.daemon.main import _Server

class Events:
    def end_streams(self): pass

@contextlib.asynccontextmanager
async def lifespan(_):
    yield
    await asyncio.Event().wait()  # a shut-down step that never finishes

app = FastAPI(lifespan=lifespan)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.bind(sys.argv[1]); sock.listen(8)
config = uvicorn.Config(app, log_level="warning", lifespan="on")
asyncio.run(_Server(config, Events(), grace=0.5).serve(sockets=[sock]))
"""


def test_hung_shutdown_is_forced_to_exit(tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(sock)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # serving, lifespan started
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    assert "shut-down did not finish" in err
