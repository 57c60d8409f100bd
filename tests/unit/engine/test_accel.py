"""The accelerator probe, with fake QEMU binaries (small shell scripts)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from corral.engine.accel import CACHE_FILE, Accelerator, probe_accelerator
from corral.errors import EngineError, InvalidInput

VERSION = 'if [ "$1" = --version ]; then echo "QEMU emulator version 7.2.0 (fake)"; exit 0; fi\n'


def fake_qemu(tmp_path: Path, body: str, name: str = "qemu") -> Path:
    """A fake QEMU: answers --version, writes its pid and argv, then runs ``body``."""
    path = tmp_path / name
    path.write_text(
        "#!/bin/sh\n"
        + VERSION
        + f'echo $$ > "{tmp_path}/{name}.pid"\necho "$@" > "{tmp_path}/{name}.args"\n'
        + body
    )
    path.chmod(0o755)
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Path]:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"\0" * 1000)
    device = tmp_path / "kvm"
    device.write_bytes(b"")  # opens read-write like a usable /dev/kvm
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("11111111-2222-3333-4444-555555555555\n")
    return {"kernel": kernel, "device": device, "boot_id": boot_id, "cache": tmp_path / "cache"}


def probe(qemu: Path | str, env: dict[str, Path], setting: str = "auto", timeout: float = 1.0) -> Accelerator:
    return asyncio.run(
        probe_accelerator(
            str(qemu),
            env["kernel"],
            env["cache"],
            setting,
            kvm_device=env["device"],
            boot_timeout=timeout,
            boot_id_file=env["boot_id"],
        )
    )


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_tcg_setting_never_probes(tmp_path: Path, env: dict[str, Path]) -> None:
    accel = probe(tmp_path / "no-qemu", env, "tcg")
    assert accel.name == "tcg" and "requested" in accel.reason
    assert not env["cache"].exists()


def test_kvm_setting_checks_the_device(tmp_path: Path, env: dict[str, Path]) -> None:
    assert probe(tmp_path / "no-qemu", env, "kvm").name == "kvm"
    env["device"].unlink()
    with pytest.raises(EngineError, match="does not exist"):
        probe(tmp_path / "no-qemu", env, "kvm")


@pytest.mark.skipif(os.geteuid() == 0, reason="root opens any file")
def test_kvm_setting_device_not_openable(tmp_path: Path, env: dict[str, Path]) -> None:
    env["device"].chmod(0o400)
    with pytest.raises(EngineError, match="cannot be opened"):
        probe(tmp_path / "no-qemu", env, "kvm")


def test_unknown_setting(tmp_path: Path, env: dict[str, Path]) -> None:
    with pytest.raises(InvalidInput):
        probe(tmp_path / "no-qemu", env, "hvf")


def test_auto_without_device_is_tcg(tmp_path: Path, env: dict[str, Path]) -> None:
    env["device"].unlink()
    accel = probe(tmp_path / "no-qemu", env)
    assert accel.name == "tcg" and "does not exist" in accel.reason


def test_auto_kernel_panic_means_kvm_and_is_cached(tmp_path: Path, env: dict[str, Path]) -> None:
    qemu = fake_qemu(
        tmp_path, 'echo "Linux version 6.1"\necho "---[ end Kernel panic - not syncing: VFS ]---"\nsleep 30\n'
    )
    started = time.monotonic()
    accel = probe(qemu, env, timeout=10)
    assert accel.name == "kvm"
    assert time.monotonic() - started < 5, "the marker must end the probe, not the timeout"
    assert gone(int((tmp_path / "qemu.pid").read_text()))
    args = (tmp_path / "qemu.args").read_text()
    assert "-accel kvm" in args and f"-kernel {env['kernel']}" in args and "-no-reboot" in args

    cache = json.loads((env["cache"] / CACHE_FILE).read_text())
    assert cache["accelerator"]["name"] == "kvm"
    assert cache["key"]["boot_id"] == "11111111-2222-3333-4444-555555555555"
    assert cache["key"]["qemu_version"] == "QEMU emulator version 7.2.0 (fake)"
    assert cache["key"]["kernel_size"] == 1000

    # Cached: the probe does not boot again (the pid file is not rewritten).
    (tmp_path / "qemu.pid").unlink()
    assert probe(qemu, env) == accel
    assert not (tmp_path / "qemu.pid").exists()

    # Another boot of the host: probe again.
    env["boot_id"].write_text("99999999-2222-3333-4444-555555555555\n")
    assert probe(qemu, env).name == "kvm"
    assert (tmp_path / "qemu.pid").exists()

    # Another kernel (size changed): probe again.
    (tmp_path / "qemu.pid").unlink()
    env["kernel"].write_bytes(b"\0" * 2000)
    probe(qemu, env)
    assert (tmp_path / "qemu.pid").exists()


def test_auto_clean_exit_after_output_means_kvm(tmp_path: Path, env: dict[str, Path]) -> None:
    qemu = fake_qemu(tmp_path, 'echo "Linux version 6.1"\nexit 0\n')
    assert probe(qemu, env).name == "kvm"


def test_auto_qemu_failure_means_tcg(tmp_path: Path, env: dict[str, Path]) -> None:
    qemu = fake_qemu(
        tmp_path, 'echo "qemu-system-x86_64: failed to initialize kvm: Permission denied" >&2\nexit 1\n'
    )
    accel = probe(qemu, env)
    assert accel.name == "tcg" and "failed to initialize kvm" in accel.reason


def test_auto_hanging_guest_means_tcg_and_is_killed(tmp_path: Path, env: dict[str, Path]) -> None:
    qemu = fake_qemu(tmp_path, "exec sleep 60\n")
    started = time.monotonic()
    accel = probe(qemu, env, timeout=1.0)
    assert accel.name == "tcg"
    assert accel.reason.startswith("KVM opened but a test guest did not boot within 1 s")
    assert 1.0 <= time.monotonic() - started < 5
    assert gone(int((tmp_path / "qemu.pid").read_text()))
    cache = json.loads((env["cache"] / CACHE_FILE).read_text())
    assert cache["accelerator"]["name"] == "tcg"


def test_cancelled_probe_leaves_no_process(tmp_path: Path, env: dict[str, Path]) -> None:
    qemu = fake_qemu(tmp_path, "exec sleep 60\n")

    async def main() -> None:
        task = asyncio.create_task(
            probe_accelerator(
                str(qemu),
                env["kernel"],
                env["cache"],
                kvm_device=env["device"],
                boot_timeout=30,
                boot_id_file=env["boot_id"],
            )
        )
        pid_file = tmp_path / "qemu.pid"
        for _ in range(100):
            if pid_file.exists() and pid_file.read_text().strip():
                break
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert gone(int((tmp_path / "qemu.pid").read_text()))
    assert not (env["cache"] / CACHE_FILE).exists()


def test_corrupt_cache_is_ignored(tmp_path: Path, env: dict[str, Path]) -> None:
    env["cache"].mkdir()
    (env["cache"] / CACHE_FILE).write_text("{not json")
    qemu = fake_qemu(tmp_path, 'echo "Kernel panic"\nsleep 30\n')
    assert probe(qemu, env).name == "kvm"


def test_missing_qemu_is_an_engine_error(tmp_path: Path, env: dict[str, Path]) -> None:
    with pytest.raises(EngineError, match="cannot run"):
        probe(tmp_path / "no-qemu", env)
