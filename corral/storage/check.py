"""Images are checked before use after an unclean stop; leaks are repaired, a corrupt image is never used.

When: before a start, if the VM's last QEMU did not shut down cleanly (the VM is ``crashed``: QEMU died, or was found
dead after a host crash; or its ``images-open`` marker is left: QEMU did not exit with status 0, e.g. `corral kill`
or a stop that had to kill it) or if an image says so itself (qcow2 ``corrupt`` bit, or ``dirty`` with lazy
refcounts). What: ``qemu-img check -f qcow2`` of every qcow2 the VM writes (its root overlay and its attached extra
disks). Then:

- clean: the start goes on (an ``image-check`` event says what was checked);
- leaked clusters only (space lost, no data at risk): repaired with ``-r leaks``, reported, the start goes on;
- corruptions, or an image qemu-img cannot even open: :class:`CorruptImage`, the start refused, the image left as
  it is. ``corral disk repair VM`` (``qemu-img check -r all``) is the user's decision, since it may drop data.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from corral.engine import qemu_img
from corral.errors import Conflict, CorralError, EngineError
from corral.store.db import DiskRecord, VMRecord
from corral.vm.states import VMState

log = logging.getLogger(__name__)

MARKED_CORRUPT = "marked corrupt"
EventSink = Callable[..., Any]  # VMService.event(vm, type, message, result=..., **data)


class CorruptImage(Conflict):
    """An image of the VM is corrupt: it is not used until repaired."""


@dataclass(frozen=True)
class CheckResult:
    file: str
    corruptions: int = 0
    leaks: int = 0
    leaks_fixed: int = 0
    corruptions_fixed: int = 0
    error: str = ""  # qemu-img could not check it at all

    @property
    def corrupt(self) -> bool:
        return bool(self.error) or self.corruptions > 0

    def summary(self) -> str:
        if self.error:
            return f"{self.file}: cannot be checked: {self.error}"
        parts = []
        if self.corruptions:
            parts.append(f"{self.corruptions} errors")
        if self.corruptions_fixed:
            parts.append(f"{self.corruptions_fixed} errors repaired")
        if self.leaks:
            parts.append(f"{self.leaks} leaked clusters")
        if self.leaks_fixed:
            parts.append(f"{self.leaks_fixed} leaked clusters repaired")
        return f"{self.file}: {', '.join(parts) or 'clean'}"


def _result(path: Path, data: dict[str, Any]) -> CheckResult:
    return CheckResult(file=str(path), corruptions=int(data.get("corruptions", 0)) + int(data.get("check-errors", 0)),
                       leaks=int(data.get("leaks", 0)), leaks_fixed=int(data.get("leaks-fixed", 0)),
                       corruptions_fixed=int(data.get("corruptions-fixed", 0)))


async def check(path: Path, repair: str | None = None) -> CheckResult:
    try:
        return _result(path, await qemu_img.check(path, repair))
    except EngineError as exc:
        return CheckResult(file=str(path), error=exc.message.removeprefix("qemu-img check failed: "))


def written_images(root_disk: Path, disks: Iterable[DiskRecord]) -> list[Path]:
    """Every qcow2 a VM's QEMU writes: the root overlay and the attached extra disks."""
    return [root_disk, *(Path(d.file) for d in disks if d.attached)]


QCOW2_MAGIC = b"QFI\xfb"
INCOMPAT_DIRTY = 1 << 0  # qcow2 v3 incompatible feature bits (docs/interop/qcow2.txt in QEMU's source)
INCOMPAT_CORRUPT = 1 << 1
#: The incompatible feature bits QEMU 7.2 knows: dirty, corrupt, external data file, compression type, extended L2.
KNOWN_INCOMPAT = 0x1F


def _header_flags(path: Path) -> str | None:
    """What the qcow2 header itself says (the same bits `qemu-img info` reports as ``corrupt`` and ``dirty-flag``):
    why the image asks for a check, '' if it does not, None if the header is not one this reads (then qemu-img
    decides). Read here because it is 80 bytes, where `qemu-img info` is a process before every start (~6 ms)."""
    with open(path, "rb") as f:
        head = f.read(80)
    if len(head) < 72 or head[:4] != QCOW2_MAGIC:
        return None
    version = int.from_bytes(head[4:8], "big")
    if version == 2:  # no feature bits: never marked
        return ""
    if version != 3 or len(head) < 80:
        return None
    incompat = int.from_bytes(head[72:80], "big")
    if incompat & ~KNOWN_INCOMPAT:
        return None
    if incompat & INCOMPAT_CORRUPT:
        return f"{path} is {MARKED_CORRUPT}"
    if incompat & INCOMPAT_DIRTY:
        return f"{path} was not closed cleanly"
    return ""


async def _flagged(path: Path) -> str:
    """Why the image itself asks for a check ('' if it does not)."""
    try:
        found = await asyncio.to_thread(_header_flags, path)
    except OSError as exc:
        return f"{path} cannot be opened ({exc.strerror})"
    if found is not None:
        return found
    try:
        info = await qemu_img.info(path)
    except CorralError as exc:
        return f"{path} cannot be opened ({exc.message})"
    data = info.get("format-specific", {}).get("data", {})
    if data.get("corrupt"):
        return f"{path} is {MARKED_CORRUPT}"
    if info.get("dirty-flag"):
        return f"{path} was not closed cleanly"
    return ""


async def before_start(rec: VMRecord, images: list[Path], event: EventSink, open_marker: Path | None = None
                       ) -> list[CheckResult]:
    """Check (and repair leaks in) ``images`` if the VM stopped uncleanly (it is ``crashed``, or ``open_marker``
    is still there: its last QEMU did not exit with status 0) or an image is flagged; raise :class:`CorruptImage`
    for a corrupt one. Returns the results ([] when no check was needed)."""
    images = [p for p in images if p.exists()]
    flags = {p: await _flagged(p) for p in images}
    unclean = rec.state == VMState.CRASHED or (open_marker is not None and open_marker.exists())
    why = f"its last stop was not clean ({rec.last_exit_reason or rec.state_reason or 'crashed'})" \
        if unclean else next((f for f in flags.values() if f), "")
    if not why:
        return []
    results = []
    for p in images:
        r = await check(p)
        if not r.corrupt and flags[p].endswith(MARKED_CORRUPT):  # QEMU refuses to write it until it is repaired
            r = replace(r, error=f"{MARKED_CORRUPT} by QEMU")
        if not r.corrupt and r.leaks:
            r = await check(p, "leaks")  # only clusters nothing uses: no data is at risk
        results.append(r)
    bad = [r for r in results if r.corrupt]
    text = "; ".join(r.summary() for r in results)
    event(rec.name, "image-check", f"checked {len(results)} image(s) before start, as {why}: {text}",
          result="error" if bad else "ok", images=[asdict(r) for r in results])
    if bad:
        r = bad[0]
        what = r.error or f"qemu-img check found {r.corruptions} errors"
        raise CorruptImage(f"disk image {r.file} of VM '{rec.name}' is corrupt ({what}); it was not used and the VM "
                           f"was not started: copy it somewhere safe, then `corral disk repair {rec.name}` "
                           "(qemu-img check -r all, which may lose the damaged data)")
    return results


async def repair(images: list[Path]) -> list[CheckResult]:
    """``qemu-img check -r all`` of each image; the VM must not be running."""
    return [await check(p, "all") for p in images if p.exists()]
