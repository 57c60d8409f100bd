"""Build debian-12 (or reuse the cached build) and boot it under TCG with a hand-written QEMU command line.

Checks what the daemon relies on: the guest agent answers on org.qemu.guest_agent.0, systemd reaches ``running``
with no failed units, apt works and the hostname comes from the kernel command line.

In `make test-extended`, not `make test`: test_debian12_vm boots the same image through Corral and checks the same
(and more); this one tells, when that one fails, whether the image or Corral is to blame.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.handboot import HandVM, hand_boot, installed_image

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.extended]

MEMORY_MIB = int(os.environ.get("CORRAL_TEST_MEMORY", "1024"))


def _explain_failure(vm: HandVM, state: str) -> None:
    failed = vm.exec("systemctl", "--failed", "--no-legend", "--plain")[1]
    units = [line.split()[0] for line in failed.splitlines() if line.strip()]
    print(vm.exec("journalctl", "-b", "--no-pager", "-n", "80", *(f"-u{u}" for u in units))[1])
    pytest.fail(f"system is {state!r}; failed units: {failed.strip()}")


def test_debian12_boots_to_running(tmp_path: Path) -> None:
    image = installed_image("debian-12", tmp_path / "images")
    with hand_boot(image, tmp_path, hostname="deb", memory=MEMORY_MIB, smp=2, tb_size=64) as vm:
        print(f"boot-to-agent: {vm.wait_agent(400):.1f} s")
        code, out = vm.exec("systemctl", "is-system-running", "--wait", timeout=400)
        if out.strip() != "running":
            _explain_failure(vm, out.strip())
        assert code == 0
        print("slowest units:\n" + "\n".join(vm.exec("systemd-analyze", "blame")[1].splitlines()[:12]))
        code, out = vm.exec("apt", "--version")
        assert code == 0 and out.startswith("apt "), out
        assert vm.exec("hostname")[1].strip() == "deb"
        # Each VM gets its own machine-id, written on first boot.
        code, out = vm.exec("cat", "/etc/machine-id")
        assert code == 0 and len(out.strip()) == 32, out
