"""The command line of each guest architecture: the per-arch data of corral.engine.cmdline.ARCHES, as QEMU sees it."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from corral.engine.cmdline import (
    ARCHES,
    BootSource,
    HostConfig,
    Identity,
    MemoryFile,
    build_argv,
    check_hotplug,
    check_template_mounts,
)
from corral.errors import InvalidInput
from corral.paths import VMPaths
from corral.vm.arch import Arch, host_arch, image_ref, split_ref
from corral.vm.spec import VMSpec

BOOT = BootSource(kernel=Path("/img/vmlinuz"), initrd=Path("/img/initrd.img"), cmdline="root=/dev/vda rw",
                  base_disk=Path("/img/disk.qcow2"))
PATHS = VMPaths(Path("/home/vms/web"))
IDENT = Identity("0b4c7d2e-1111-2222-3333-444455556666", "52:54:00:12:34:56")
HOST = HostConfig("/opt/qemu/bin/qemu-system-x86_64", "tcg", 32)


def argv(arch: str, memory: MemoryFile | None = None, host: HostConfig = HOST) -> list[str]:
    return build_argv(VMSpec(name="web", arch=arch), BOOT, PATHS, host, IDENT, memory=memory)


def opt(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_x86_64_is_q35_with_the_configured_binary_and_isa_pvpanic() -> None:
    a = argv("x86_64")
    assert a[0] == "/opt/qemu/bin/qemu-system-x86_64"
    assert opt(a, "-machine") == ["q35"] and opt(a, "-cpu") == ["max"]
    assert "pvpanic" in opt(a, "-device")


def test_aarch64_is_arms_virt_machine_with_cheap_pointer_authentication() -> None:
    a = argv("aarch64")
    assert a[0] == "qemu-system-aarch64"
    assert opt(a, "-machine") == ["virt,gic-version=max"]
    assert opt(a, "-cpu") == ["max,pauth-impdef=on"]
    assert opt(a, "-accel") == ["tcg,tb-size=32"]
    devices = opt(a, "-device")
    assert not [d for d in devices if d.startswith("pvpanic")]  # Debian's arm64 kernel has no pvpanic driver
    assert "pcie-root-port,id=hp0,chassis=1,io-reserve=0" in devices  # hot-plug works on arm's virt
    assert "virtio-blk-pci,drive=root,id=root-disk,werror=enospc,rerror=report" in devices


def test_riscv64_is_riscvs_virt_machine_with_the_rv64_cpu() -> None:
    a = argv("riscv64")
    assert a[0] == "qemu-system-riscv64"
    assert opt(a, "-machine") == ["virt"] and opt(a, "-cpu") == ["rv64"]
    assert "-bios" not in a  # QEMU's built-in OpenSBI
    assert not [d for d in opt(a, "-device") if d.startswith("pvpanic")]


@pytest.mark.parametrize(("arch", "ram"), [("x86_64", "pc.ram"), ("aarch64", "mach-virt.ram"),
                                           ("riscv64", "riscv_virt_board.ram")])
def test_a_templates_memory_backend_has_the_machines_ram_block_name(arch: str, ram: str) -> None:
    a = argv(arch, MemoryFile(Path("/t/memory")))
    assert f"memory-backend-file,id={ram},mem-path=/t/memory,size=256M,share=off" in opt(a, "-object")
    assert f"memory-backend={ram}" in opt(a, "-machine")


def test_kvm_keeps_the_host_cpu_whatever_the_profile() -> None:
    a = argv("aarch64", host=HostConfig("qemu-system-x86_64", "kvm", 32))
    assert opt(a, "-accel") == ["kvm"] and opt(a, "-cpu") == ["host"]


def test_every_architecture_has_a_profile_and_the_serial_console_names_differ() -> None:
    assert set(ARCHES) == set(Arch)
    assert {a: p.console for a, p in ARCHES.items()} == {Arch.X86_64: "ttyS0", Arch.AARCH64: "ttyAMA0",
                                                         Arch.RISCV64: "ttyS0"}


def test_the_spec_defaults_to_the_hosts_architecture_and_refuses_an_unknown_one() -> None:
    assert VMSpec(name="web").arch == host_arch()
    with pytest.raises(ValidationError, match="x86_64"):
        VMSpec(name="web", arch="sparc64")


def test_hotplug_is_refused_only_where_the_guest_cannot_see_it() -> None:
    check_hotplug(VMSpec(name="a", arch="aarch64"), "a", "add a disk to it")
    with pytest.raises(InvalidInput, match=r"riscv64, whose kernel has no PCIe hot-plug: stop it first to add a "
                                           r"disk to it \(`corral stop r`\)"):
        check_hotplug(VMSpec(name="r", arch="riscv64"), "r", "add a disk to it")


def test_image_refs_keep_x86_64_images_where_they_were() -> None:
    assert image_ref("tiny", "x86_64") == "tiny" and split_ref("tiny") == ("tiny", Arch.X86_64)
    assert image_ref("tiny", Arch.AARCH64) == "tiny@aarch64"
    assert split_ref("tiny@riscv64") == ("tiny", Arch.RISCV64)
    assert VMSpec(name="web", arch="riscv64").image_ref == "tiny@riscv64"


@pytest.mark.parametrize("ref", ["@K\u00ab", "tiny@ppc64le", "Tiny", "../x", "a/b", "", "tiny@"])
def test_a_key_that_is_no_image_name_is_invalid_input_not_a_crash(ref: str, tmp_path: Path) -> None:
    """The API's fuzzing found GET /v1/images/@... answered 500 (an unknown architecture was a ValueError)."""
    from corral.images.store import ImageStore

    with pytest.raises(InvalidInput, match="is not an image name"):
        split_ref(ref)
    with pytest.raises(InvalidInput, match="is not an image name"):
        ImageStore(tmp_path / "images", tmp_path / "cache").get(ref)


def test_a_riscv64_template_launch_with_a_folder_is_refused() -> None:
    check_template_mounts(VMSpec(name="a", arch="aarch64", mounts=["/srv/data"]))
    check_template_mounts(VMSpec(name="r", arch="riscv64"))
    with pytest.raises(InvalidInput, match="--mount is not possible with a riscv64 template"):
        check_template_mounts(VMSpec(name="r", arch="riscv64", mounts=["/srv/data"]))
