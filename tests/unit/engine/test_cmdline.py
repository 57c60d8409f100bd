from pathlib import Path

import pytest

from corral.engine.cmdline import (
    HOTPLUG_PORTS,
    MOUNT_SLOTS,
    SANDBOX,
    Attachments,
    BootSource,
    DiskAttachment,
    DiskNodes,
    HostConfig,
    Identity,
    MemoryFile,
    MountAttachment,
    build_argv,
)
from corral.paths import VMPaths
from corral.storage.chain import Chain, ChainLayer
from corral.vm.spec import VMSpec

BOOT = BootSource(kernel=Path("/img/vmlinuz"), initrd=Path("/img/initrd.img"), cmdline="root=/dev/vda rw",
                  base_disk=Path("/img/disk.qcow2"))
PATHS = VMPaths(Path("/home/vms/web"))
IDENT = Identity("0b4c7d2e-1111-2222-3333-444455556666", "52:54:00:12:34:56")


def without_mount_slots(args: list[str]) -> list[str]:
    """The command line without the shared-folder slots, which come last (tested on their own below)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        if args[i] == "-fsdev" or (args[i] == "-device" and args[i + 1].startswith(("pcie-root-port,id=mp",
                                                                                     "virtio-9p-pci"))):
            i += 2
            continue
        out.append(args[i])
        i += 1
    return out


def argv(accel: str = "tcg", **spec: object) -> list[str]:
    return without_mount_slots(build_argv(VMSpec(name="web", **spec), BOOT, PATHS,
                                          HostConfig("qemu-system-x86_64", accel, 32), IDENT))


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


@pytest.mark.parametrize("flag", ["vmx", "svm"])
def test_a_nested_vm_under_kvm_gets_the_hosts_extension(flag: str) -> None:
    a = build_argv(VMSpec(name="web", nested=True), BOOT, PATHS,
                   HostConfig("qemu-system-x86_64", "kvm", 32, nested_flag=flag), IDENT)
    assert opt(a, "-accel") == ["kvm"]
    assert opt(a, "-cpu") == [f"host,{flag}=on"]


@pytest.mark.parametrize(("accel", "flag"), [("tcg", "svm"), ("tcg", None), ("kvm", None), ("kvm", "ept")])
def test_a_nested_vm_is_never_built_without_kvm_and_a_checked_flag(accel: str, flag: str | None) -> None:
    with pytest.raises(ValueError, match="nested VM needs KVM"):
        build_argv(VMSpec(name="web", nested=True), BOOT, PATHS,
                   HostConfig("qemu-system-x86_64", accel, 32, nested_flag=flag), IDENT)


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
    # Corral's guest channel: a second port on the same bus, its host side a private socket in the VM directory.
    assert "virtserialport,bus=vser0.0,chardev=chan0,name=org.corral.channel.0" in opt(argv(), "-device")
    assert any(o.startswith("socket,id=chan0,path=") and o.endswith("/channel.sock,server=on,wait=off")
               for o in opt(argv(), "-chardev"))


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


def _chain_argv(chain: Chain) -> list[str]:
    return build_argv(VMSpec(name="web"), BOOT, PATHS, HostConfig("qemu-system-x86_64", "tcg", 32), IDENT,
                      Attachments(chain=chain))


def test_a_chain_of_layers_is_one_blockdev_pair_each_backing_named_read_only_below_the_top() -> None:
    chain = Chain((ChainLayer(Path("/img/disk.qcow2")), ChainLayer(Path("/home/layers/a.qcow2")),
                   ChainLayer(Path("/home/layers/b.qcow2")), ChainLayer(Path("/home/layers/c.qcow2"))))
    a = _chain_argv(chain)
    assert opt(a, "-blockdev") == [
        "driver=file,node-name=base-file,filename=/img/disk.qcow2,read-only=on",
        "driver=qcow2,node-name=base,file=base-file,read-only=on",
        "driver=file,node-name=layer1-file,filename=/home/layers/a.qcow2,read-only=on",
        "driver=qcow2,node-name=layer1,file=layer1-file,backing=base,read-only=on",
        "driver=file,node-name=layer2-file,filename=/home/layers/b.qcow2,read-only=on",
        "driver=qcow2,node-name=layer2,file=layer2-file,backing=layer1,read-only=on",
        "driver=file,node-name=root-file,filename=/home/layers/c.qcow2",
        "driver=qcow2,node-name=root,file=root-file,backing=layer2",
    ]
    assert "virtio-blk-pci,drive=root,id=root-disk,werror=enospc,rerror=report" in opt(a, "-device")


def test_a_legacy_vm_is_a_chain_of_one_overlay_and_the_same_text() -> None:
    legacy = Chain((ChainLayer(Path("/img/disk.qcow2")), ChainLayer(PATHS.disk)))
    assert without_mount_slots(_chain_argv(legacy)) == argv()


def test_a_standalone_disk_is_one_writable_node() -> None:
    a = _chain_argv(Chain((ChainLayer(Path("/home/layers/full.qcow2")),)))
    assert opt(a, "-blockdev") == ["driver=file,node-name=root-file,filename=/home/layers/full.qcow2",
                                   "driver=qcow2,node-name=root,file=root-file"]


def test_a_raw_base_under_qcow2_layers() -> None:
    a = _chain_argv(Chain((ChainLayer(Path("/img/disk.raw"), "raw"), ChainLayer(Path("/l/t.qcow2")))))
    assert "driver=raw,node-name=base,file=base-file,read-only=on" in opt(a, "-blockdev")
    with pytest.raises(ValueError):
        Chain((ChainLayer(Path("/img/disk.qcow2")), ChainLayer(Path("/l/t.raw"), "raw")))
def _with_disks(*disks: DiskAttachment) -> list[str]:
    return without_mount_slots(build_argv(VMSpec(name="web"), BOOT, PATHS,
                                          HostConfig("qemu-system-x86_64", "tcg", 32), IDENT, Attachments(disks=disks)))


def test_every_vm_has_hot_plug_ports_after_its_other_devices() -> None:
    devices = opt(argv(), "-device")
    ports = [d for d in devices if d.startswith("pcie-root-port")]
    assert ports == [f"pcie-root-port,id=hp{i},chassis={i + 1},io-reserve=0" for i in range(HOTPLUG_PORTS)]
    assert devices[-HOTPLUG_PORTS:] == ports  # last: the other devices keep their PCI addresses


def test_no_extra_disks_no_extra_nodes() -> None:
    assert not any(b.startswith("driver=throttle") for b in opt(argv(), "-blockdev"))
    assert opt(argv(), "-object") == []


def test_extra_disks_file_qcow2_throttle_in_their_ports() -> None:
    a = _with_disks(DiskAttachment("data", Path("/home/vms/web/disks/data.qcow2"), 0),
                    DiskAttachment("logs", Path("/home/vms/web/disks/logs.qcow2"), 3,
                                   (("bps-write", 1048576), ("iops-total", 100))))
    assert opt(a, "-object") == [
        '{"qom-type":"throttle-group","id":"tg-data","limits":{}}',
        '{"qom-type":"throttle-group","id":"tg-logs","limits":{"bps-write":1048576,"iops-total":100}}',
    ]
    assert opt(a, "-blockdev")[-6:] == [
        "driver=file,node-name=xd-data-file,filename=/home/vms/web/disks/data.qcow2",
        "driver=qcow2,node-name=xd-data-fmt,file=xd-data-file",
        "driver=throttle,node-name=xd-data,throttle-group=tg-data,file=xd-data-fmt",
        "driver=file,node-name=xd-logs-file,filename=/home/vms/web/disks/logs.qcow2",
        "driver=qcow2,node-name=xd-logs-fmt,file=xd-logs-file",
        "driver=throttle,node-name=xd-logs,throttle-group=tg-logs,file=xd-logs-fmt",
    ]
    devices = opt(a, "-device")
    assert devices[-2:] == [
        "virtio-blk-pci,drive=xd-data,id=xd-data-dev,serial=data,bus=hp0,werror=enospc,rerror=report",
        "virtio-blk-pci,drive=xd-logs,id=xd-logs-dev,serial=logs,bus=hp3,werror=enospc,rerror=report",
    ]
    # Each disk's device comes after the port it sits in.
    assert devices.index("pcie-root-port,id=hp3,chassis=4,io-reserve=0") < devices.index(devices[-1])


def test_disk_node_names_fit_qemu() -> None:
    n = DiskNodes.of("a" * 20)
    assert max(len(x) for x in (n.file, n.fmt, n.top)) <= 31
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


def test_no_balloon_by_default() -> None:
    assert not any("balloon" in x for x in argv())
    assert VMSpec(name="web").balloon is False
    # A spec stored before the field existed loads without it: its command line (and saved state) do not change.
    assert VMSpec.model_validate({"name": "web", "memory": 256}).balloon is False


def test_balloon_with_free_page_reporting_last_so_other_devices_keep_their_addresses() -> None:
    plain, ballooned = argv(), argv(balloon=True)
    assert ballooned == [*plain, "-device", "virtio-balloon-pci,id=balloon0,free-page-reporting=on,"
                         "deflate-on-oom=on,guest-stats-polling-interval=5"]


def test_balloon_after_extra_disks_too() -> None:
    disks = (DiskAttachment("data", Path("/home/vms/web/disks/data.qcow2"), 0),)
    a = without_mount_slots(build_argv(VMSpec(name="web", balloon=True), BOOT, PATHS,
                                       HostConfig("qemu-system-x86_64", "tcg", 32), IDENT, Attachments(disks=disks)))
    devices = opt(a, "-device")
    assert devices[-2].startswith("virtio-blk-pci,drive=xd-data,") and devices[-1].startswith("virtio-balloon-pci,")


def test_no_balloon_over_a_memory_file() -> None:
    # QEMU 7.2 would punch holes in the template's memory file (ram_block_discard_range on a file-backed block).
    with pytest.raises(ValueError, match="cannot have a balloon"):
        build_argv(VMSpec(name="web", balloon=True), BOOT, PATHS, HostConfig("qemu-system-x86_64", "tcg", 32),
                   IDENT, memory=MemoryFile(Path("/t/memory.ram")))


def _with_mounts(*mounts: MountAttachment, balloon: bool = False) -> list[str]:
    return build_argv(VMSpec(name="web", balloon=balloon), BOOT, PATHS, HostConfig("qemu-system-x86_64", "tcg", 32),
                      IDENT, Attachments(mounts=mounts))


def test_every_vm_has_its_mount_slots_last_whether_it_shares_folders_or_not() -> None:
    a = _with_mounts()
    assert opt(a, "-fsdev") == [
        f"local,id=fs{n}{ro},path=/home/vms/web/mounts/slot{n},security_model=none,multidevs=remap"
        + (",readonly=on" if ro == "ro" else "") for n in range(MOUNT_SLOTS) for ro in ("ro", "rw")]
    ports = [f"pcie-root-port,id=mp{n},chassis={HOTPLUG_PORTS + 1 + n},io-reserve=0" for n in range(MOUNT_SLOTS)]
    assert opt(a, "-device")[-MOUNT_SLOTS:] == ports  # after the balloon too: every other device keeps its address
    assert opt(_with_mounts(balloon=True), "-device")[-MOUNT_SLOTS - 1].startswith("virtio-balloon-pci")
    assert not any(d.startswith("virtio-9p-pci") for d in opt(a, "-device"))


def test_plugged_mounts_sit_in_their_slot_read_only_or_not() -> None:
    a = _with_mounts(MountAttachment(slot=0), MountAttachment(slot=2, read_only=False))
    assert opt(a, "-device")[-2:] == [
        "virtio-9p-pci,id=mnt0,fsdev=fs0ro,mount_tag=corral0,bus=mp0",
        "virtio-9p-pci,id=mnt2,fsdev=fs2rw,mount_tag=corral2,bus=mp2",
    ]


def test_mounts_of_a_template_vm_are_not_on_the_command_line() -> None:
    """A template's saved state has no 9p device: the mounts are hot-plugged after it loads."""
    a = _with_mounts(MountAttachment(slot=0, plugged=False))
    assert not any(d.startswith("virtio-9p-pci") for d in opt(a, "-device"))
    assert a == _with_mounts()


def test_without_nat_a_vm_has_no_nic_at_all() -> None:
    """``nat: false`` (a sandbox's --net none): no user-mode NAT and no virtio-net device, not a NIC left down."""
    args = argv(nat=False)
    assert not opt(args, "-netdev") and not any(d.startswith("virtio-net") for d in opt(args, "-device"))
    assert opt(argv(), "-netdev")[0].startswith("user,id=net0")


def test_port_forwards_need_the_nat() -> None:
    with pytest.raises(ValueError, match="port forwards need the NAT NIC"):
        VMSpec(name="web", nat=False, ports=["8080:80"])
    assert VMSpec(name="web", ephemeral=True).ephemeral


def test_unprivileged_qemu_drops_root_after_set_up() -> None:
    args = argv(nat=False, unprivileged=True)
    assert opt(args, "-runas") == ["nobody"]
    assert opt(args, "-sandbox") == ["on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"]
    assert not opt(argv(), "-runas") and "elevateprivileges=deny" in opt(argv(), "-sandbox")[0]
    with pytest.raises(ValueError, match="unprivileged QEMU cannot reach"):
        VMSpec(name="web", unprivileged=True, networks=["blue"])


def test_a_restricted_nat_keeps_net0_for_the_saved_state_but_restrict_on_and_no_forwards() -> None:
    """A sandbox from a template: the same netdev id and device (the saved machine has them), restrict=on, no
    hostfwd at all (not even SSH, not the spec's ports)."""
    args = build_argv(VMSpec(name="web", nat_restricted=True), BOOT, PATHS, HostConfig("qemu-system-x86_64", "tcg", 32),
                      IDENT, Attachments(ssh_port=2222))
    assert opt(args, "-netdev") == ["user,id=net0,restrict=on"]
    assert "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56" in opt(args, "-device")
    assert not opt(args, "-object")
    plain = build_argv(VMSpec(name="web"), BOOT, PATHS, HostConfig("qemu-system-x86_64", "tcg", 32), IDENT,
                       Attachments(ssh_port=2222))
    assert opt(plain, "-netdev") == ["user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22"]
    with pytest.raises(ValueError, match="restricted NAT NIC has no port forwards"):
        VMSpec(name="web", nat_restricted=True, ports=["8080:80"])
    with pytest.raises(ValueError, match="keep nat on"):
        VMSpec(name="web", nat=False, nat_restricted=True)


def test_nat_capture_dumps_what_the_guest_sends_into_the_vms_pcap() -> None:
    args = argv(nat_restricted=True, nat_capture=True)
    # queue=rx: the netdev's receive queue, i.e. the frames the guest's NIC sends to it
    assert opt(args, "-object") == ["filter-dump,id=dump0,netdev=net0,queue=rx,file=/home/vms/web/net0.pcap"]
    assert args.index("-object") > args.index("-netdev")
    with pytest.raises(ValueError, match="keep nat on"):
        VMSpec(name="web", nat=False, nat_capture=True)


def test_no_screen_by_default() -> None:
    a = build_argv(VMSpec(name="web"), BOOT, PATHS, HostConfig("qemu-system-x86_64", "tcg", 32), IDENT)
    assert "-vnc" not in a and "usb-tablet,bus=xhci.0" not in a
    assert opt(a, "-display") == ["none"]


def test_display_vnc_gets_a_screen_a_tablet_and_vnc_on_a_unix_socket_last() -> None:
    a = build_argv(VMSpec(name="web", display="vnc"), BOOT, PATHS, HostConfig("qemu-system-x86_64", "tcg", 32), IDENT)
    assert a[-8:] == ["-device", "VGA", "-device", "qemu-xhci,id=xhci", "-device", "usb-tablet,bus=xhci.0",
                      "-vnc", "unix:/home/vms/web/vnc.sock"]
    assert all(not v.startswith(("tcp", ":", "0.0.0.0")) for v in opt(a, "-vnc"))  # never on the network
    # every other device keeps the address it has without a screen
    assert a[:-8] == build_argv(VMSpec(name="web"), BOOT, PATHS, HostConfig("qemu-system-x86_64", "tcg", 32), IDENT)


def test_display_vnc_on_other_arches_uses_virtio_gpu() -> None:
    a = build_argv(VMSpec(name="web", display="vnc", arch="aarch64"), BOOT, PATHS,
                   HostConfig("qemu-system-x86_64", "tcg", 32), IDENT)
    assert "virtio-gpu-pci" in opt(a, "-device") and "VGA" not in opt(a, "-device")


def test_display_is_none_or_vnc() -> None:
    with pytest.raises(ValueError):
        VMSpec(name="web", display="sdl")  # type: ignore[arg-type]
