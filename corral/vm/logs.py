"""The serial and QEMU logs of a VM: reading (all, the last lines, or what is new) and rotation.

QEMU appends to ``serial.log`` itself (its chardev logfile, opened with O_APPEND), so a running VM's log is rotated
by copy-then-truncate; a stopped VM's is renamed at the next start. One old copy (``.1``) is kept.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from corral.paths import VMPaths

SERIAL_LOG_MAX = 4 << 20  # rotate past 4 MiB


def rotate_stopped(path: Path) -> None:
    """Keep one old copy of a log that grew past the limit (done while QEMU is not running)."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > SERIAL_LOG_MAX:
            path.replace(path.with_suffix(path.suffix + ".1"))


def rotate_running(path: Path) -> None:
    """Rotate a log QEMU is appending to: copy it aside, then truncate it in place."""
    try:
        if path.stat().st_size > SERIAL_LOG_MAX:
            shutil.copyfile(path, path.with_suffix(path.suffix + ".1"))
            os.truncate(path, 0)
    except FileNotFoundError:
        return


def render_logs(paths: VMPaths, tail_lines: int | None) -> str:
    """The serial log (with the rotated copy before it), or its last ``tail_lines`` lines."""
    text = ""
    for p in (paths.serial_log.with_suffix(".log.1"), paths.serial_log):
        with contextlib.suppress(FileNotFoundError):
            text += p.read_text(errors="replace")
    if tail_lines is not None:
        lines = text.splitlines()[-tail_lines:] if tail_lines > 0 else []
        text = "".join(line + "\n" for line in lines)
    return text


def read_log_from(paths: VMPaths, offset: int) -> tuple[bytes, int]:
    """What the current serial log holds past byte ``offset``, and its size: for following it. A log that is
    now shorter than ``offset`` was rotated, and is read from its start."""
    try:
        with open(paths.serial_log, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = offset if offset <= size else 0
            f.seek(start)
            return f.read(size - start), size
    except FileNotFoundError:
        return b"", 0
