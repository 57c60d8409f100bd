"""Boot the tiny image under TCG with a hand-written QEMU command line and check what the daemon relies on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.handboot import QMP, hand_boot, installed_image

pytestmark = [pytest.mark.vm, pytest.mark.slow]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return installed_image("tiny", tmp_path_factory.mktemp("images"))


def test_tiny_boots_answers_and_powers_off(image: Path, tmp_path: Path) -> None:
    with hand_boot(image, tmp_path, hostname="probe-vm", disk_size="2G") as vm:
        print(f"boot-to-agent: {vm.wait_agent(120):.2f} s")
        code, out = vm.exec("uname", "-a")
        assert code == 0 and "Linux" in out
        assert vm.exec("hostname")[1].strip() == "probe-vm"
        # The root filesystem grew online to the overlay's 2 GiB.
        for _ in range(50):
            out = vm.exec("sh", "-c", "df -k / | tail -1")[1]
            if int(out.split()[1]) > 1_500_000:
                break
            time.sleep(0.2)
        assert int(out.split()[1]) > 1_500_000, out
        # The kernel sees the power button; the pvpanic driver is bound; machine-id is this VM's own.
        out = vm.exec("sh", "-c", "cat /proc/bus/input/devices; ls /sys/bus/platform/drivers/pvpanic-mmio")[1]
        assert "Power Button" in out and "QEMU0001" in out, out
        assert len(vm.exec("cat", "/etc/machine-id")[1].strip()) == 32
        qmp = QMP(vm.qmp)
        try:
            assert qmp.execute("system_powerdown") == {"return": {}}
        finally:
            qmp.close()
        assert vm.proc.wait(timeout=60) == 0


def test_tiny_reboots_and_reports_panic(image: Path, tmp_path: Path) -> None:
    with hand_boot(image, tmp_path, hostname="probe-vm") as vm:
        vm.wait_agent(120)
        qmp = QMP(vm.qmp)
        try:
            vm.exec("sh", "-c", "(sleep 1; reboot) >/dev/null 2>&1 &")
            qmp.wait("RESET", 60)
            vm.wait_agent(120)  # the agent is back after the reboot
            assert vm.exec("hostname")[1].strip() == "probe-vm"
            vm.exec("sh", "-c", "(sleep 1; echo c > /proc/sysrq-trigger) >/dev/null 2>&1 &")
            qmp.wait("GUEST_PANICKED", 60)
        finally:
            qmp.close()
