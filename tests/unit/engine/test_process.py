"""corral.engine.process: a process is alive until its last thread has exited."""

from __future__ import annotations

import asyncio
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corral.engine import process

# SYS_exit (not exit_group): ends only the calling thread.
SYS_EXIT = {"x86_64": 60, "aarch64": 93}.get(platform.machine())

# The main thread exits by itself, leaving a thread that runs for 2 more seconds: the leader is a zombie meanwhile.
LEADER_EXITS_FIRST = f"""
import ctypes, sys, threading, time
threading.Thread(target=time.sleep, args=(2,)).start()
print("ready", flush=True)
ctypes.CDLL(None).syscall({SYS_EXIT}, 0)
"""


def leader_state(pid: int) -> str:
    data = Path(f"/proc/{pid}/stat").read_text()
    return data[data.rindex(")") + 2:].split()[0]


@pytest.mark.skipif(SYS_EXIT is None, reason="SYS_exit number known for x86_64 and aarch64 only")
def test_zombie_leader_with_a_live_thread_is_alive() -> None:
    p = subprocess.Popen([sys.executable, "-c", LEADER_EXITS_FIRST], stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 5
        while leader_state(p.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert leader_state(p.pid) == "Z", "the main thread exited"
        assert process.is_alive(p.pid), "its other thread still runs: the process has not exited"
        t0 = time.monotonic()
        asyncio.run(asyncio.wait_for(process.wait_exit(p.pid), 10))
        assert time.monotonic() - t0 > 0.5, "wait_exit waited for the last thread"
        assert not process.is_alive(p.pid)  # a zombie with no live thread (not yet reaped)
    finally:
        p.kill()
        p.wait()
        if p.stdout is not None:
            p.stdout.close()
    assert not process.is_alive(p.pid)


def test_running_and_absent() -> None:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert process.is_alive(p.pid)
    finally:
        p.kill()
        p.wait()
    assert not process.is_alive(p.pid)
