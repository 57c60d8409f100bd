"""Choose the accelerator by probing it, not by assuming it.

``/dev/kvm`` existing and opening is not enough: on some hosts (nested virtualization gone wrong) it opens but a
guest never runs. The probe therefore boots the VM kernel under KVM with no root disk: on a working host the kernel
reaches "VFS: Unable to mount root fs" / "Kernel panic" within about a second, and ``panic=-1`` plus ``-no-reboot``
make QEMU exit. If nothing shows up within the boot timeout, KVM is declared unusable and TCG is chosen.

The probe result is cached in ``<cache_dir>/accel-probe.json``, keyed by the host's boot id, the QEMU version and the
kernel (path and size), so it runs once per host boot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from corral.errors import EngineError, InvalidInput

log = logging.getLogger(__name__)

CACHE_FILE = "accel-probe.json"
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
KVM_DEVICE = Path("/dev/kvm")
#: A KVM host boots the test kernel to its panic in about a second; this is the generous bound.
DEFAULT_BOOT_TIMEOUT = 10.0
#: Serial output that proves the guest kernel ran.
BOOT_MARKERS = (b"Kernel panic", b"VFS: Unable to mount root", b"Unable to mount root fs")


@dataclass(frozen=True)
class Accelerator:
    """The accelerator to run VMs with, and why it was chosen (shown to the user)."""

    name: Literal["kvm", "tcg"]
    reason: str


def _kvm_opens(device: Path) -> str | None:
    """Return None if ``device`` opens read-write, else why not."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"{device} does not exist"
    except OSError as exc:
        return f"{device} cannot be opened read-write: {exc.strerror or exc}"
    os.close(fd)
    return None


async def _qemu_version(qemu_binary: str) -> str:
    """The first line of ``qemu --version`` (raises EngineError if QEMU does not run)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            qemu_binary,
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise EngineError(f"cannot run {qemu_binary} --version: {exc}") from exc
    try:
        async with asyncio.timeout(30):
            stdout, stderr = await proc.communicate()
    finally:
        await _reap(proc)
    if proc.returncode != 0:
        raise EngineError(
            f"{qemu_binary} --version failed (exit {proc.returncode}): {stderr.decode(errors='replace').strip()}"
        )
    lines = stdout.decode(errors="replace").strip().splitlines()
    return lines[0] if lines else ""


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Kill ``proc``'s process group (it was started in its own session) if it still runs, and wait for it.

    The SIGKILL is sent before any await, so even if this is cancelled nothing is left running.
    """
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    await proc.wait()


def _cache_key(boot_id: str, qemu_version: str, kernel: Path) -> dict[str, Any]:
    return {
        "boot_id": boot_id,
        "qemu_version": qemu_version,
        "kernel": str(kernel),
        "kernel_size": kernel.stat().st_size,
    }


def _read_cache(path: Path, key: dict[str, Any]) -> Accelerator | None:
    try:
        content = json.loads(path.read_text())
        if content.get("key") != key:
            return None
        found = content["accelerator"]
        if found["name"] not in ("kvm", "tcg"):
            return None
        return Accelerator(name=found["name"], reason=str(found["reason"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_cache(path: Path, key: dict[str, Any], accel: Accelerator) -> None:
    """Write atomically (temp file + rename); a failure only costs a probe next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "accelerator": asdict(accel)}, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write the accelerator cache %s: %s", path, exc)


async def _boot_test(qemu_binary: str, kernel: Path, boot_timeout: float) -> Accelerator:
    """Boot ``kernel`` under KVM without a disk and decide from its serial output."""
    args = [
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "128",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-kernel",
        str(kernel),
        "-append",
        "console=ttyS0 panic=-1",
        "-no-reboot",
    ]
    try:
        proc = await asyncio.create_subprocess_exec(
            qemu_binary,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise EngineError(f"cannot run {qemu_binary}: {exc}") from exc
    assert proc.stdout is not None
    seen = bytearray()  # the last few KiB, for markers split across reads and for the reason
    try:
        async with asyncio.timeout(boot_timeout):
            while True:
                chunk = await proc.stdout.read(4096)
                if not chunk:
                    break
                seen += chunk
                if any(marker in seen for marker in BOOT_MARKERS):
                    return Accelerator("kvm", "KVM works: a test guest booted under KVM")
                del seen[: max(0, len(seen) - 4096)]
            await proc.wait()
    except TimeoutError:
        return Accelerator(
            "tcg", f"KVM opened but a test guest did not boot within {boot_timeout:g} s; using TCG (slow)"
        )
    finally:
        await _reap(proc)
    tail = seen.decode(errors="replace").strip().splitlines()
    if proc.returncode == 0 and tail:
        # QEMU left through -no-reboot after the kernel ran and printed something.
        return Accelerator("kvm", "KVM works: a test guest booted under KVM")
    last = tail[-1] if tail else "no output"
    return Accelerator(
        "tcg", f"QEMU could not run a KVM guest (exit {proc.returncode}: {last}); using TCG (slow)"
    )


async def probe_accelerator(
    qemu_binary: str,
    kernel: Path,
    cache_dir: Path,
    setting: str = "auto",
    *,
    kvm_device: Path = KVM_DEVICE,
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT,
    boot_id_file: Path = BOOT_ID_FILE,
) -> Accelerator:
    """Decide between KVM and TCG according to ``setting`` ("auto", "kvm" or "tcg").

    "tcg" never probes. "kvm" only checks that ``kvm_device`` opens read-write (EngineError if not): the user asked
    for it, so a hanging guest is theirs to see. "auto" falls back to TCG when the device is missing or closed, and
    otherwise boots a test guest (once per host boot, see the module docstring). No process outlives this call,
    even when it is cancelled.
    """
    if setting == "tcg":
        return Accelerator("tcg", "TCG requested in the settings")
    if setting == "kvm":
        problem = _kvm_opens(kvm_device)
        if problem is not None:
            raise EngineError(f"KVM requested but {problem}")
        return Accelerator("kvm", "KVM requested in the settings")
    if setting != "auto":
        raise InvalidInput(f"unknown accelerator setting '{setting}' (expected auto, kvm or tcg)")

    problem = _kvm_opens(kvm_device)
    if problem is not None:
        return Accelerator("tcg", f"{problem}; using TCG (slow)")
    if not kernel.is_file():
        raise EngineError(f"cannot probe KVM: kernel {kernel} does not exist")

    try:
        boot_id = boot_id_file.read_text().strip()
    except OSError:
        boot_id = ""
    key = _cache_key(boot_id, await _qemu_version(qemu_binary), kernel)
    cache = cache_dir / CACHE_FILE
    if boot_id:
        cached = _read_cache(cache, key)
        if cached is not None:
            return cached
    accel = await _boot_test(qemu_binary, kernel, boot_timeout)
    log.info("accelerator probe: %s (%s)", accel.name, accel.reason)
    if boot_id:
        _write_cache(cache, key, accel)
    return accel
