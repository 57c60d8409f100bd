"""qemu-img, always with explicit formats, run in a subprocess (never on the event loop)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from corral.errors import EngineError


async def _run(*args: str) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            "qemu-img", *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    except FileNotFoundError as exc:
        raise EngineError("qemu-img not found: install it with `apt-get install qemu-utils`") from exc
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise EngineError(f"qemu-img {args[0]} failed: {err.decode(errors='replace').strip()}")
    return out.decode()


async def create_overlay(path: Path, backing: Path, backing_format: str, size: int | None) -> None:
    """A qcow2 overlay on ``backing`` with the backing format written into its header (never probed)."""
    args = ["create", "-q", "-f", "qcow2", "-F", backing_format, "-b", str(backing), str(path)]
    if size is not None:
        args.append(str(size))
    await _run(*args)


async def info(path: Path, fmt: str = "qcow2") -> dict[str, Any]:
    result: dict[str, Any] = json.loads(await _run("info", "-f", fmt, "--output=json", str(path)))
    return result


async def convert(src: Path, src_format: str, dest: Path, dest_format: str = "qcow2", *,
                  force_share: bool = False) -> None:
    """``src`` (with its whole backing chain, each layer's format from its header) into one standalone image."""
    await _run("convert", *(["-U"] if force_share else []), "-f", src_format, "-O", dest_format, str(src), str(dest))
