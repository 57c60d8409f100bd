"""The QEMU command line, built in exactly one place: a pure function of the spec, the image and the host.

Composed of small per-device builders; no I/O here, so it is tested against expected text
(tests/unit/engine/test_cmdline.py). Safe by default: every drive states its format (the backing image too, as its
own read-only node), QMP, the agent and the console are unix sockets in the VM's private directory, and QEMU's
seccomp sandbox is on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from corral.paths import VMPaths
from corral.vm.spec import VMSpec

SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


@dataclass(frozen=True)
class BootSource:
    """What the image gives: a kernel, its initrd, its command line, and the disk the VM's overlay sits on.

    ``mode="disk"`` (imported images): no kernel, the disk boots itself through the firmware, SeaBIOS (QEMU's
    default) or, with ``firmware="uefi"``, OVMF: its code read-only and this VM's own copy of its variables.
    """

    kernel: Path | None
    initrd: Path | None
    cmdline: str
    base_disk: Path
    base_format: str = "qcow2"
    mode: Literal["kernel", "disk"] = "kernel"
    firmware: Literal["bios", "uefi"] = "bios"
    ovmf_code: Path | None = None
    ovmf_vars: Path | None = None  # the VM's copy, writable


@dataclass(frozen=True)
class HostConfig:
    """What the host decided: the QEMU binary, the probed accelerator and the TCG translation-cache size."""

    qemu_binary: str
    accel: str  # "kvm" or "tcg"
    tcg_tb_size_mib: int = 32


@dataclass(frozen=True)
class NicAttachment:
    """A NIC on a private network: frames go as unix datagrams between ``local`` (ours) and the switch."""

    network: str
    mac: str
    local: Path
    switch: Path
    tap: str | None = None  # a bridged network (root only): this tap device instead of the switch


@dataclass(frozen=True)
class Attachments:
    """What the host prepared for this start: the SSH forward, private NICs, the cloud-init seed."""

    ssh_port: int | None = None
    nics: tuple[NicAttachment, ...] = ()
    seed: Path | None = None


@dataclass(frozen=True)
class MemoryFile:
    """Guest RAM mapped from a file instead of anonymous memory: a template's memory (docs/explanation/templates.md).

    ``share=False`` (a VM from a template): a private copy-on-write mapping; the file is never written, pages the
    guest only reads stay the page cache's, shared by every VM mapping the file. ``share=True`` (only while a
    template is made): writes go to the file. The backend is named ``pc.ram``, the name of q35's RAM block without
    a backend, so a migration stream from an ordinary VM loads into it.
    """

    path: Path
    share: bool = False


@dataclass(frozen=True)
class Identity:
    """What makes this VM itself: the UUID (also the mark that re-attach checks in /proc) and the MAC."""

    vm_id: str
    mac: str


def _machine(host: HostConfig) -> list[str]:
    if host.accel == "kvm":
        accel, cpu = "kvm", "host"
    else:
        # A small translation cache per VM: QEMU's default (1 GiB) would cap a host at a handful of VMs.
        accel, cpu = f"tcg,tb-size={host.tcg_tb_size_mib}", "max"
    return ["-machine", "q35", "-accel", accel, "-cpu", cpu]


def _resources(spec: VMSpec) -> list[str]:
    return ["-smp", str(spec.vcpus), "-m", f"{spec.memory}M"]


def _memory(spec: VMSpec, memory: MemoryFile | None) -> list[str]:
    if memory is None:
        return []
    share = "on" if memory.share else "off"
    return [
        "-object", f"memory-backend-file,id=pc.ram,mem-path={memory.path},size={spec.memory}M,share={share}",
        "-machine", "memory-backend=pc.ram",
    ]  # fmt: skip


def _identity(spec: VMSpec, ident: Identity) -> list[str]:
    return ["-name", f"corral-{spec.name}", "-uuid", ident.vm_id]


def _boot(spec: VMSpec, boot: BootSource) -> list[str]:
    if boot.mode == "disk":
        return _firmware(boot)
    assert boot.kernel is not None and boot.initrd is not None
    host = spec.guest_hostname
    append = f"{boot.cmdline} corral.hostname={host} systemd.hostname={host}".strip()
    return ["-kernel", str(boot.kernel), "-initrd", str(boot.initrd), "-append", append]


def _firmware(boot: BootSource) -> list[str]:
    if boot.firmware == "bios":
        return []  # SeaBIOS, QEMU's default, boots the root disk (bootindex=0)
    if boot.ovmf_code is None or boot.ovmf_vars is None:
        raise ValueError("a UEFI boot needs the OVMF code and this VM's copy of the OVMF variables")
    # Both flash images are raw, stated; the code is read-only, the variables are the VM's own copy.
    return [
        "-blockdev", f"driver=file,node-name=ovmf-code-file,filename={boot.ovmf_code},read-only=on",
        "-blockdev", "driver=raw,node-name=ovmf-code,file=ovmf-code-file,read-only=on",
        "-blockdev", f"driver=file,node-name=ovmf-vars-file,filename={boot.ovmf_vars}",
        "-blockdev", "driver=raw,node-name=ovmf-vars,file=ovmf-vars-file",
        "-machine", "pflash0=ovmf-code,pflash1=ovmf-vars",
    ]  # fmt: skip


def _root_disk(boot: BootSource, paths: VMPaths) -> list[str]:
    # Each layer is its own node with its format stated, so QEMU never probes a format: the read-only base image,
    # then the VM's qcow2 overlay on top of it. werror=enospc pauses the VM when the host's storage is full.
    bootindex = ",bootindex=0" if boot.mode == "disk" else ""
    return [
        "-blockdev", f"driver=file,node-name=base-file,filename={boot.base_disk},read-only=on",
        "-blockdev", f"driver={boot.base_format},node-name=base,file=base-file,read-only=on",
        "-blockdev", f"driver=file,node-name=root-file,filename={paths.disk}",
        "-blockdev", "driver=qcow2,node-name=root,file=root-file,backing=base",
        "-device", f"virtio-blk-pci,drive=root,id=root-disk,werror=enospc,rerror=report{bootindex}",
    ]  # fmt: skip


def _network(spec: VMSpec, ident: Identity, att: Attachments) -> list[str]:
    # NAT with outbound access, no root: QEMU's user networking. Forwards bind on the host side only.
    fwds = [f"hostfwd={p.proto}:{p.host_addr}:{p.host_port}-:{p.guest_port}" for p in spec.ports]
    if att.ssh_port is not None:
        fwds.insert(0, f"hostfwd=tcp:127.0.0.1:{att.ssh_port}-:22")
    user = ",".join(["user,id=net0", *fwds])
    args = ["-netdev", user, "-device", f"virtio-net-pci,netdev=net0,mac={ident.mac}"]
    for i, nic in enumerate(att.nics, start=1):
        if nic.tap is not None:
            args += ["-netdev", f"tap,id=net{i},ifname={nic.tap},script=no,downscript=no",
                     "-device", f"virtio-net-pci,netdev=net{i},mac={nic.mac}"]
            continue
        args += [
            "-netdev", f"dgram,id=net{i},local.type=unix,local.path={nic.local},"
                       f"remote.type=unix,remote.path={nic.switch}",
            "-device", f"virtio-net-pci,netdev=net{i},mac={nic.mac}",
        ]  # fmt: skip
    return args


def _seed(att: Attachments) -> list[str]:
    if att.seed is None:
        return []
    # The NoCloud seed (volume label cidata), read-only, format stated.
    return [
        "-blockdev", f"driver=file,node-name=seed-file,filename={att.seed},read-only=on",
        "-blockdev", "driver=raw,node-name=seed,file=seed-file,read-only=on",
        "-device", "virtio-blk-pci,drive=seed,id=seed-disk",
    ]  # fmt: skip


def _guest_agent(paths: VMPaths) -> list[str]:
    return [
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"socket,id=qga0,path={paths.qga_socket},server=on,wait=off",
        "-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
    ]  # fmt: skip


def _serial(paths: VMPaths) -> list[str]:
    # logfile keeps every byte the guest writes, whether or not anyone (the daemon included) is attached.
    return [
        "-chardev",
        f"socket,id=serial0,path={paths.console_socket},server=on,wait=off,"
        f"logfile={paths.serial_log},logappend=on",
        "-serial", "chardev:serial0",
    ]  # fmt: skip


def _monitor(paths: VMPaths) -> list[str]:
    return [
        "-chardev", f"socket,id=qmp0,path={paths.qmp_socket},server=on,wait=off",
        "-mon", "chardev=qmp0,mode=control",
    ]  # fmt: skip


def _devices() -> list[str]:
    # pvpanic turns a guest kernel panic into a GUEST_PANICKED event; virtio-rng gives the guest entropy early.
    return ["-device", "pvpanic", "-device", "virtio-rng-pci", "-action", "panic=shutdown"]


def _safety() -> list[str]:
    return ["-nodefaults", "-no-user-config", "-display", "none", "-sandbox", SANDBOX, "-msg", "timestamp=on"]


def build_argv(
    spec: VMSpec, boot: BootSource, paths: VMPaths, host: HostConfig, ident: Identity,
    att: Attachments = Attachments(), memory: MemoryFile | None = None,
) -> list[str]:
    """The whole QEMU command line for ``spec``. Pure: same inputs, same list."""
    return [
        host.qemu_binary,
        *_identity(spec, ident),
        *_machine(host),
        *_resources(spec),
        *_memory(spec, memory),
        *_safety(),
        *_boot(spec, boot),
        *_root_disk(boot, paths),
        *_network(spec, ident, att),
        *_seed(att),
        *_guest_agent(paths),
        *_serial(paths),
        *_monitor(paths),
        *_devices(),
    ]
