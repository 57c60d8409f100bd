"""qemu-img, always with explicit formats, run in a subprocess (never on the event loop)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral.errors import EngineError


async def run(*args: str, ok: tuple[int, ...] = (0,)) -> str:
    """``qemu-img ARGS`` in a subprocess: its stdout; EngineError with its stderr unless its exit code is in ``ok``."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "qemu-img", *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    except FileNotFoundError as exc:
        raise EngineError("qemu-img not found: install it with `apt-get install qemu-utils`") from exc
    out, err = await proc.communicate()
    if proc.returncode not in ok:
        raise EngineError(f"qemu-img {args[0]} failed: {err.decode(errors='replace').strip()}")
    return out.decode()


async def create(path: Path, size: int) -> None:
    """A new, empty qcow2 of ``size`` bytes (virtual), with no backing file."""
    await run("create", "-q", "-f", "qcow2", str(path), str(size))


async def resize(path: Path, size: int) -> None:
    """Grow the qcow2 at ``path`` to ``size`` bytes; never shrinks (``--shrink`` is not given)."""
    await run("resize", "-q", "-f", "qcow2", str(path), str(size))


async def check(path: Path, repair: str | None = None) -> dict[str, Any]:
    """``qemu-img check`` of the qcow2 at ``path`` (read-only, or with ``repair`` "leaks" or "all"), as its JSON:
    ``corruptions``, ``leaks``, ``check-errors``, ``leaks-fixed``, ``corruptions-fixed``...

    Exit codes 2 (corruptions) and 3 (leaks) are findings, not failures; 1 (the check could not run) raises.
    """
    args = ["check", "-f", "qcow2", "--output=json"]
    if repair is not None:
        args += ["-r", repair]
    out = await run(*args, str(path), ok=(0, 2, 3))
    result: dict[str, Any] = json.loads(out) if out.strip() else {}
    return result


async def create_overlay(path: Path, backing: Path, backing_format: str, size: int | None) -> None:
    """A qcow2 overlay on ``backing`` with the backing format written into its header (never probed)."""
    args = ["create", "-q", "-f", "qcow2", "-F", backing_format, "-b", str(backing), str(path)]
    if size is not None:
        args.append(str(size))
    await run(*args)


async def info(path: Path, fmt: str = "qcow2") -> dict[str, Any]:
    result: dict[str, Any] = json.loads(await run("info", "-f", fmt, "--output=json", str(path)))
    return result


# -- layers (corral.storage) -------------------------------------------------------------------------------------

async def rebase(path: Path, backing: Path | None, backing_format: str = "qcow2") -> None:
    """Safe-mode rebase of the qcow2 ``path`` onto ``backing`` (None: no backing at all): every cluster where the old
    and the new backing chains differ is copied into ``path`` first, so what ``path`` shows is unchanged."""
    if backing is None:
        await run("rebase", "-f", "qcow2", "-b", "", str(path))
    else:
        await run("rebase", "-f", "qcow2", "-F", backing_format, "-b", str(backing), str(path))


async def set_backing(path: Path, backing: Path | None, backing_format: str = "qcow2") -> None:
    """Rewrite only the backing file name (and format) in the qcow2 header of ``path`` (``rebase -u``): for a layer
    whose backing file moved, with the same content, to another path (an imported VM's layers)."""
    if backing is None:
        await run("rebase", "-u", "-f", "qcow2", "-b", "", str(path))
    else:
        await run("rebase", "-u", "-f", "qcow2", "-F", backing_format, "-b", str(backing), str(path))


_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


async def convert(src: Path, dst: Path, progress: Callable[[float], None] | None = None, *,
                  force_share: bool = False) -> None:
    """Copy the whole chain under the qcow2 ``src`` into one standalone qcow2 ``dst``, reporting percent done.
    ``force_share`` (-U): read an image a running QEMU holds (the caller makes sure nothing writes it meanwhile)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "qemu-img", "convert", "-p", *(["-U"] if force_share else []), "-f", "qcow2", "-O", "qcow2", str(src),
            str(dst),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    except FileNotFoundError as exc:
        raise EngineError("qemu-img not found: install it with `apt-get install qemu-utils`") from exc
    assert proc.stdout is not None and proc.stderr is not None
    buf = b""
    while chunk := await proc.stdout.read(256):
        buf = (buf + chunk)[-512:]
        found = _PROGRESS.findall(buf)
        if found and progress is not None:
            progress(float(found[-1]))
    err = await proc.stderr.read()
    if await proc.wait() != 0:
        raise EngineError(f"qemu-img convert failed: {err.decode(errors='replace').strip()}")


async def create_layer(path: Path, backing: Path, size: int) -> None:
    """A qcow2 overlay on the qcow2 ``backing`` of ``size`` bytes; the backing chain is not opened (-u: Corral knows
    it, and opening it would cost more the deeper it is)."""
    await run("create", "-q", "-f", "qcow2", "-u", "-F", "qcow2", "-b", str(backing), str(path), str(size))


async def convert_raw(src: Path, dst: Path, src_format: str = "qcow2") -> None:
    """The whole chain under ``src`` as one sparse raw file ``dst`` (a sandbox reads its file system from it with
    debugfs, corral.sandbox.diskdiff). The source format is stated; its backing files are the ones its header
    names, with their formats, as Corral wrote them."""
    await run("convert", "-f", src_format, "-O", "raw", "-S", "4k", str(src), str(dst))
