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
#: Lines Corral's init of an OCI image writes to the console (corral.images.oci.guest): the daemon reads the main
#: process's exit code from the last "exited" line after the last "started" line.
STARTED_MARK = "corral-init: main process started"
EXITED_MARK = "corral-init: main process exited with code "
_TAIL = 256 << 10


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


def main_exit_code(paths: VMPaths) -> int | None:
    """The exit code of an OCI VM's main process in its last run, from the end of its serial log: the last
    :data:`EXITED_MARK` line after the last :data:`STARTED_MARK` line, or None (no such run, or it never ended).

    Only Corral's init writes the exited line, after the main process is gone; a line the process itself printed
    comes before that, and the last one wins."""
    data = b""
    for p in (paths.serial_log.with_suffix(".log.1"), paths.serial_log):  # a rotation may have split the run
        with contextlib.suppress(FileNotFoundError), open(p, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _TAIL))
            data = data[-_TAIL:] + f.read()
    text = data.decode(errors="replace")
    start = text.rfind(STARTED_MARK)
    if start < 0:
        return None
    code = None
    for line in text[start:].splitlines():
        line = line.strip()
        if line.startswith(EXITED_MARK) and line.removeprefix(EXITED_MARK).isdigit():
            code = int(line.removeprefix(EXITED_MARK))
    return code
