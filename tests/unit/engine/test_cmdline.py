from pathlib import Path

from corral.engine.cmdline import SANDBOX, BootSource, HostConfig, Identity, MemoryFile, build_argv
from corral.paths import VMPaths
from corral.vm.spec import VMSpec

BOOT = BootSource(kernel=Path("/img/vmlinuz"), initrd=Path("/img/initrd.img"), cmdline="root=/dev/vda rw",
                  base_disk=Path("/img/disk.qcow2"))
PATHS = VMPaths(Path("/home/vms/web"))
IDENT = Identity("0b4c7d2e-1111-2222-3333-444455556666", "52:54:00:12:34:56")


def argv(accel: str = "tcg", **spec: object) -> list[str]:
    return build_argv(VMSpec(name="web", **spec), BOOT, PATHS, HostConfig("qemu-system-x86_64", accel, 32), IDENT)


def opt(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_tcg_gets_a_small_translation_cache() -> None:
    a = argv("tcg")
    assert opt(a, "-accel") == ["tcg,tb-size=32"]
    assert opt(a, "-cpu") == ["max"]


def test_kvm_uses_host_cpu() -> None:
    a = argv("kvm")
    assert opt(a, "-accel") == ["kvm"]
    assert opt(a, "-cpu") == ["host"]


def test_resources_and_identity() -> None:
    a = argv(vcpus=2, memory="1G")
    assert opt(a, "-smp") == ["2"] and opt(a, "-m") == ["1024M"]
    assert opt(a, "-uuid") == [IDENT.vm_id]
    assert "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56" in opt(a, "-device")


def test_every_block_layer_states_its_format() -> None:
    blockdevs = opt(argv(), "-blockdev")
    assert blockdevs == [
        "driver=file,node-name=base-file,filename=/img/disk.qcow2,read-only=on",
        "driver=qcow2,node-name=base,file=base-file,read-only=on",
        "driver=file,node-name=root-file,filename=/home/vms/web/disk.qcow2",
        "driver=qcow2,node-name=root,file=root-file,backing=base",
    ]
    assert "-drive" not in argv() and "-hda" not in argv()


def test_safe_by_default() -> None:
    a = argv()
    assert opt(a, "-sandbox") == [SANDBOX]
    assert SANDBOX == "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
    assert "-nodefaults" in a and "-no-user-config" in a
    # Every socket is a unix socket inside the VM's private directory; nothing listens on TCP.
    chardevs = opt(a, "-chardev")
    assert all("path=/home/vms/web/" in c for c in chardevs)
    assert not any("tcp" in x or "telnet" in x for x in a)


def test_hostname_and_serial_log() -> None:
    a = argv()
    assert opt(a, "-append") == ["root=/dev/vda rw corral.hostname=web systemd.hostname=web"]
    assert any("logfile=/home/vms/web/serial.log,logappend=on" in c for c in opt(a, "-chardev"))
    assert opt(a, "-serial") == ["chardev:serial0"]


def test_guest_agent_port_name() -> None:
    assert "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0" in opt(argv(), "-device")


def test_pure() -> None:
    assert argv() == argv()


def _disk_argv(boot: BootSource) -> list[str]:
    return build_argv(VMSpec(name="web"), boot, PATHS, HostConfig("qemu-system-x86_64", "tcg", 32), IDENT)


def test_disk_boot_bios_has_no_kernel_and_boots_the_root_disk() -> None:
    a = _disk_argv(BootSource(kernel=None, initrd=None, cmdline="", base_disk=Path("/img/disk.qcow2"), mode="disk"))
    assert "-kernel" not in a and "-initrd" not in a and "-append" not in a
    assert "virtio-blk-pci,drive=root,id=root-disk,werror=enospc,rerror=report,bootindex=0" in opt(a, "-device")
    assert "-drive" not in a and not any("pflash" in x for x in a)
    assert opt(a, "-blockdev")[:2] == ["driver=file,node-name=base-file,filename=/img/disk.qcow2,read-only=on",
                                       "driver=qcow2,node-name=base,file=base-file,read-only=on"]


def test_disk_boot_uefi_uses_ovmf_flash_with_formats_stated() -> None:
    a = _disk_argv(BootSource(kernel=None, initrd=None, cmdline="", base_disk=Path("/img/disk.qcow2"), mode="disk",
                              firmware="uefi", ovmf_code=Path("/usr/share/OVMF/OVMF_CODE.fd"),
                              ovmf_vars=Path("/home/vms/web/efivars.fd")))
    assert "-kernel" not in a
    bd = opt(a, "-blockdev")
    assert "driver=file,node-name=ovmf-code-file,filename=/usr/share/OVMF/OVMF_CODE.fd,read-only=on" in bd
    assert "driver=raw,node-name=ovmf-code,file=ovmf-code-file,read-only=on" in bd
    assert "driver=file,node-name=ovmf-vars-file,filename=/home/vms/web/efivars.fd" in bd
    assert "driver=raw,node-name=ovmf-vars,file=ovmf-vars-file" in bd
    assert opt(a, "-machine") == ["q35", "pflash0=ovmf-code,pflash1=ovmf-vars"]


def test_kernel_boot_root_disk_unchanged() -> None:
    assert "virtio-blk-pci,drive=root,id=root-disk,werror=enospc,rerror=report" in opt(argv(), "-device")
    assert opt(argv(), "-kernel") == ["/img/vmlinuz"]


def test_no_memory_backend_by_default() -> None:
    a = argv()
    assert "-object" not in a and opt(a, "-machine") == ["q35"]


def test_template_memory_file_is_a_private_mapping_named_like_q35_ram() -> None:
    mem = MemoryFile(Path("/home/templates/t/memory.ram"))
    a = build_argv(VMSpec(name="web", memory=128), BOOT, PATHS, HostConfig("qemu-system-x86_64", "tcg", 32), IDENT,
                   memory=mem)
    assert opt(a, "-object") == [
        "memory-backend-file,id=pc.ram,mem-path=/home/templates/t/memory.ram,size=128M,share=off"]
    assert opt(a, "-machine") == ["q35", "memory-backend=pc.ram"]
    assert opt(a, "-m") == ["128M"]


def test_template_builder_writes_the_memory_file() -> None:
    a = build_argv(VMSpec(name="web", memory=128), BOOT, PATHS, HostConfig("qemu-system-x86_64", "tcg", 32), IDENT,
                   memory=MemoryFile(Path("/t/memory.ram"), share=True))
    assert opt(a, "-object") == ["memory-backend-file,id=pc.ram,mem-path=/t/memory.ram,size=128M,share=on"]


def test_overlay_on_a_template_disk_through_the_boot_source() -> None:
    from dataclasses import replace

    boot = replace(BOOT, base_disk=Path("/home/templates/t/disk.qcow2"), base_format="qcow2")
    a = build_argv(VMSpec(name="web"), boot, PATHS, HostConfig("qemu-system-x86_64", "tcg", 32), IDENT)
    blockdevs = opt(a, "-blockdev")
    assert "driver=file,node-name=base-file,filename=/home/templates/t/disk.qcow2,read-only=on" in blockdevs
    assert "driver=qcow2,node-name=base,file=base-file,read-only=on" in blockdevs
