"""Small file-system helpers shared by the layers that make files durable (machine states, backup indexes)."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the directory entries of ``path`` durable (a file renamed or created into it survives a crash)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all: a temporary file beside it, renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


#: The prefix of a deleted VM's folder, renamed out of the way before it is removed (see :func:`remove_dir`).
REMOVED_PREFIX = ".removed-"


def remove_dir(path: Path) -> None:
    """Remove a folder for good, even while a straggler still writes into it (a cancelled task's ``ssh-keygen``
    thread, say): it is first renamed aside, so a late write under the old path fails instead of bringing the folder
    back, then removed. What a crash leaves aside is swept by :func:`sweep_removed` at the next start."""
    aside = path.with_name(f"{REMOVED_PREFIX}{path.name}-{os.urandom(4).hex()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    _rmtree(aside)


def sweep_removed(parent: Path) -> list[Path]:
    """Remove what :func:`remove_dir` renamed aside and could not finish (a crash, a late writer); the removed."""
    swept = []
    with contextlib.suppress(FileNotFoundError):
        for p in parent.iterdir():
            if p.name.startswith(REMOVED_PREFIX) and p.is_dir() and not p.is_symlink():
                _rmtree(p)
                swept.append(p)
    return swept


def _rmtree(path: Path) -> None:
    """``rmtree`` that tries twice: a file created inside while the first pass ran makes its last rmdir fail."""
    for _ in range(2):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
