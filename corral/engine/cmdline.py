"""The QEMU command line, built in exactly one place: a pure function of the spec, the image and the host.

Composed of small per-device builders; no I/O here, so it is tested against expected text
(tests/unit/engine/test_cmdline.py). Safe by default: every drive states its format (the backing image too, as its
own read-only node), QMP, the agent and the console are unix sockets in the VM's private directory, and QEMU's
seccomp sandbox is on.
"""

from __future__ import annotations

import base64
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from corral.engine import guest_channel
from corral.errors import InvalidInput
from corral.paths import VMPaths
from corral.storage.chain import Chain, ChainLayer
from corral.vm.arch import Arch
from corral.vm.spec import VMSpec

SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


@dataclass(frozen=True)
class ArchProfile:
    """What differs between guest architectures on QEMU's side, as data (docs/explanation/architectures.md).

    ``binary`` is used for every architecture but x86_64, whose binary is the configured one (CORRAL_QEMU).
    ``ram_id`` is the name of the machine's RAM block without a backend: a template's file-backed RAM must carry it
    for a migration stream from an ordinary VM to load into it. ``panic``: the device that turns a guest panic into a
    GUEST_PANICKED event (none on aarch64 and riscv64: QEMU has pvpanic-pci, but Debian's kernels there have no
    pvpanic driver, so a panicked guest there just stops answering).
    ``power_button``: ``system_powerdown`` reaches the guest (ACPI on q35, gpio-keys on arm's ``virt``); where it
    does not (riscv64) a stop asks the guest agent to power off. ``console``: the guest's name of the serial port.
    ``hotplug``: the guest sees devices plugged into its PCIe root ports while it runs (Debian's riscv64 kernel has
    no pciehp, so disks and shared folders reach a riscv64 guest only at its start).
    """

    binary: str
    machine: str
    tcg_cpu: str
    console: str
    ram_id: str
    panic: tuple[str, ...]
    power_button: bool
    hotplug: bool = True


ARCHES: dict[Arch, ArchProfile] = {
    Arch.X86_64: ArchProfile(binary="qemu-system-x86_64", machine="q35", tcg_cpu="max", console="ttyS0",
                             ram_id="pc.ram", panic=("-device", "pvpanic"), power_button=True),
    # gic-version=max: GICv3 under TCG (more than 8 vCPUs), the host's GIC under KVM. pauth-impdef: pointer
    # authentication with QEMU's own cheap algorithm instead of emulating QARMA (the architected one, which made the
    # guest's kernel boot several times slower under TCG). No panic device: Debian's arm64 kernel has no pvpanic.
    Arch.AARCH64: ArchProfile(binary="qemu-system-aarch64", machine="virt,gic-version=max",
                              tcg_cpu="max,pauth-impdef=on", console="ttyAMA0", ram_id="mach-virt.ram", panic=(),
                              power_button=True),
    # QEMU 7.2 has no riscv64 "max" CPU; rv64 is its full RV64GC model. The firmware is QEMU's built-in OpenSBI.
    Arch.RISCV64: ArchProfile(binary="qemu-system-riscv64", machine="virt", tcg_cpu="rv64", console="ttyS0",
                              ram_id="riscv_virt_board.ram", panic=(), power_button=False, hotplug=False),
}


def check_template_mounts(spec: VMSpec) -> None:
    """Refuse (InvalidInput) shared folders for a VM made from a template whose guest cannot see hot-plugged devices:
    a template's saved state has no folder devices, so they are plugged after it loads."""
    if spec.mounts and not ARCHES[spec.arch].hotplug:
        raise InvalidInput(f"--mount is not possible with a {spec.arch} template: a VM made from a template gets its "
                           f"folders hot-plugged, which {spec.arch}'s kernel cannot see; launch without --mount, or "
                           f"boot from the image (`--image {spec.image} --arch {spec.arch} --mount ...`)")


def check_hotplug(spec: VMSpec, vm: str, operation: str) -> None:
    """Refuse (InvalidInput) to ``operation`` on running VM ``vm`` if its guest cannot see hot-plugged devices."""
    if not ARCHES[spec.arch].hotplug:
        raise InvalidInput(f"VM '{vm}' is {spec.arch}, whose kernel has no PCIe hot-plug: stop it first to "
                           f"{operation} (`corral stop {vm}`); the change applies at its next start")


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
    """What the host decided: the QEMU binary, the probed accelerator and the TCG translation-cache size; for a
    nested VM, the CPU's virtualization flag to pass through (``vmx`` or ``svm``, checked by
    corral.engine.nested.cpu_flag)."""

    qemu_binary: str
    accel: str  # "kvm" or "tcg"
    tcg_tb_size_mib: int = 32
    nested_flag: str | None = None


@dataclass(frozen=True)
class NicAttachment:
    """A NIC on a private network: frames go as unix datagrams between ``local`` (ours) and the switch."""

    network: str
    mac: str
    local: Path
    switch: Path
    tap: str | None = None  # a bridged network (root only): this tap device instead of the switch


#: PCIe root ports every VM gets for hot-plugged disks (q35 cannot hot-plug into its root bus): at most this many
#: extra disks are attached to one VM. Disk N sits in port ``hpN`` whether it was hot-plugged or on the command line,
#: so a VM's PCI layout is the same either way (a suspended VM's saved state loads into the same devices).
HOTPLUG_PORTS = 8


#: Shared-folder slots every VM gets (corral.vm.spec.MAX_MOUNTS): each a PCIe root port ``mpN`` and two fsdevs,
#: ``fsNro`` and ``fsNrw`` (read-only enforced by QEMU), whose path is the VM's symlink ``mounts/slotN``. QEMU opens
#: an fsdev's path only when a device using it is realized, not at start, so a folder can be shared with a running
#: VM by pointing the symlink at it and hot-plugging ``virtio-9p-pci`` into ``mpN``: no QMP command adds an fsdev.
MOUNT_SLOTS = 4


@dataclass(frozen=True)
class MountAttachment:
    """A shared folder in slot ``slot``: the guest mounts tag ``corral<slot>``. ``plugged``: its device is on the
    command line (a cold start, a resume whose saved state holds it); else it is hot-plugged after start (a VM made
    from a template: the template's state has no such device)."""

    slot: int
    read_only: bool = True
    plugged: bool = True

    @property
    def tag(self) -> str:
        return mount_tag(self.slot)

    @property
    def device(self) -> str:
        return f"mnt{self.slot}"

    @property
    def fsdev(self) -> str:
        return f"fs{self.slot}{'ro' if self.read_only else 'rw'}"


def mount_tag(slot: int) -> str:
    """The 9p mount tag of a slot, what the guest names in ``mount -t 9p TAG DIR``."""
    return f"corral{slot}"


@dataclass(frozen=True)
class DiskNodes:
    """The QEMU names of one extra disk, all derived from its name: file node -> qcow2 node -> throttle node (what
    the device sits on), the throttle group object, and the device itself."""

    file: str
    fmt: str
    top: str
    group: str
    device: str

    @classmethod
    def of(cls, disk: str) -> DiskNodes:
        # Node names are at most 31 characters: disk names are at most 20 (corral.storage.disks.check_name).
        return cls(file=f"xd-{disk}-file", fmt=f"xd-{disk}-fmt", top=f"xd-{disk}", group=f"tg-{disk}",
                   device=f"xd-{disk}-dev")


@dataclass(frozen=True)
class DiskAttachment:
    """An extra disk: its qcow2 file, the hot-plug port it sits in, its I/O limits as throttle-group ``limits``
    fields (``iops-total``, ``bps-write``...; absent = unlimited). The guest sees the disk's name as its serial
    (/dev/disk/by-id/virtio-NAME, /sys/block/vdX/serial)."""

    name: str
    file: Path
    port: int
    limits: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Attachments:
    """What the host prepared for this start: the SSH forward, private NICs, the cloud-init seed, extra disks."""

    ssh_port: int | None = None
    nics: tuple[NicAttachment, ...] = ()
    seed: Path | None = None
    #: The root disk's layers, bottom to top (corral.storage); None: the image's disk under the VM's disk.qcow2.
    chain: Chain | None = None
    disks: tuple[DiskAttachment, ...] = ()
    mounts: tuple[MountAttachment, ...] = ()


@dataclass(frozen=True)
class MemoryFile:
    """Guest RAM mapped from a file instead of anonymous memory: a template's memory (docs/explanation/templates.md).

    ``share=False`` (a VM from a template): a private copy-on-write mapping; the file is never written, pages the
    guest only reads stay the page cache's, shared by every VM mapping the file. ``share=True`` (only while a
    template is made): writes go to the file. The backend is named after the machine's RAM block without a backend
    (:attr:`ArchProfile.ram_id`: ``pc.ram`` on q35), so a migration stream from an ordinary VM loads into it.
    """

    path: Path
    share: bool = False


@dataclass(frozen=True)
class Identity:
    """What makes this VM itself: the UUID (also the mark that re-attach checks in /proc) and the MAC."""

    vm_id: str
    mac: str


def qemu_binary(arch: Arch, configured: str) -> str:
    """The QEMU binary for a guest of ``arch``: the configured one (CORRAL_QEMU) for x86_64, else the arch's own."""
    return configured if arch == Arch.X86_64 else ARCHES[arch].binary


def _machine(spec: VMSpec, host: HostConfig) -> list[str]:
    profile = ARCHES[spec.arch]
    if host.accel == "kvm":  # the caller only chooses KVM for a guest of the host's own architecture
        accel, cpu = "kvm", "host" + _virt_extension(spec, host)
    else:
        # A small translation cache per VM: QEMU's default (1 GiB) would cap a host at a handful of VMs.
        accel, cpu = f"tcg,tb-size={host.tcg_tb_size_mib}", profile.tcg_cpu + _virt_extension(spec, host)
    return ["-machine", profile.machine, "-accel", accel, "-cpu", cpu]


def _virt_extension(spec: VMSpec, host: HostConfig) -> str:
    """A nested VM's CPU asks for the host's virtualization extension by name (KVM only), so QEMU fails rather than
    boot without it. Other VMs' CPUs are left as they were: turning vmx/svm off (``max,svm=off``) made the ``tiny``
    guest's static busybox abort under TCG here (docs/explanation/nested.md)."""
    if not spec.nested:
        return ""
    if host.accel != "kvm" or host.nested_flag not in ("vmx", "svm"):
        raise ValueError("a nested VM needs KVM and the host CPU's vmx or svm flag (corral.engine.nested.cpu_flag)")
    return f",{host.nested_flag}=on"


def _resources(spec: VMSpec) -> list[str]:
    return ["-smp", str(spec.vcpus), "-m", f"{spec.memory}M"]


def _memory(spec: VMSpec, memory: MemoryFile | None) -> list[str]:
    if memory is None:
        return []
    share = "on" if memory.share else "off"
    ram = ARCHES[spec.arch].ram_id
    return [
        "-object", f"memory-backend-file,id={ram},mem-path={memory.path},size={spec.memory}M,share={share}",
        "-machine", f"memory-backend={ram}",
    ]  # fmt: skip


def _identity(spec: VMSpec, ident: Identity) -> list[str]:
    return ["-name", f"corral-{spec.name}", "-uuid", ident.vm_id]


def encode_command(command: list[str]) -> str:
    """An OCI VM's `-- ARGS` as its kernel command line carries them to Corral's init (corral.images.oci.guest):
    base64 of the arguments as shell words, so no space or quote of theirs reaches the command line."""
    return base64.b64encode(" ".join(shlex.quote(w) for w in command).encode()).decode()


def _boot(spec: VMSpec, boot: BootSource) -> list[str]:
    if boot.mode == "disk":
        return _firmware(boot)
    assert boot.kernel is not None and boot.initrd is not None
    host = spec.guest_hostname
    append = f"{boot.cmdline} corral.hostname={host} systemd.hostname={host}".strip()
    if spec.command is not None:  # an OCI image's init reads it (corral.images.oci.guest)
        append += f" corral.cmd={encode_command(spec.command)}"
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


def root_chain(boot: BootSource, paths: VMPaths, chain: Chain | None) -> Chain:
    """The chain to boot from: the one storage gave, else the image's disk under the VM's own overlay."""
    if chain is not None:
        return chain
    return Chain((ChainLayer(boot.base_disk, boot.base_format), ChainLayer(paths.disk)))


def _root_disk(boot: BootSource, paths: VMPaths, chain: Chain | None) -> list[str]:
    # Each layer is its own node with its format stated and its backing node named, so QEMU never probes a format
    # nor opens a backing file by the name in a header: bottom (the image's disk) to top (the VM's writable
    # overlay), every node but the top read-only. werror=enospc pauses the VM when the host's storage is full.
    bootindex = ",bootindex=0" if boot.mode == "disk" else ""
    full = root_chain(boot, paths, chain)
    names = full.node_names()
    args: list[str] = []
    for i, (layer, node) in enumerate(zip(full.layers, names, strict=True)):
        top = i == len(names) - 1
        ro = "" if top else ",read-only=on"
        backing = f",backing={names[i - 1]}" if i > 0 else ""
        args += ["-blockdev", f"driver=file,node-name={node}-file,filename={layer.path}{ro}",
                 "-blockdev", f"driver={layer.format},node-name={node},file={node}-file{backing}{ro}"]
    return [*args,
            "-device", f"virtio-blk-pci,drive=root,id=root-disk,werror=enospc,rerror=report{bootindex}"]


def _hotplug_ports() -> list[str]:
    # io-reserve=0: virtio on PCIe needs no I/O ports, and 8 ports x 4 KiB would exhaust the 64 KiB I/O space.
    args: list[str] = []
    for i in range(HOTPLUG_PORTS):
        args += ["-device", f"pcie-root-port,id=hp{i},chassis={i + 1},io-reserve=0"]
    return args


def throttle_group_json(disk: str, limits: dict[str, int]) -> str:
    """The disk's throttle group as -object JSON (QEMU 7.2's key=value form cannot set the ``limits`` struct)."""
    obj = {"qom-type": "throttle-group", "id": DiskNodes.of(disk).group, "limits": limits}
    return json.dumps(obj, separators=(",", ":"))


def _extra_disks(disks: tuple[DiskAttachment, ...]) -> list[str]:
    """Each extra disk as hot-plug builds it: file -> qcow2 (format stated) -> throttle filter in its own group,
    then virtio-blk in its root port. werror=enospc pauses the VM when the disk's file system is full."""
    args: list[str] = []
    for d in disks:
        n = DiskNodes.of(d.name)
        args += [
            "-object", throttle_group_json(d.name, dict(d.limits)),
            "-blockdev", f"driver=file,node-name={n.file},filename={d.file}",
            "-blockdev", f"driver=qcow2,node-name={n.fmt},file={n.file}",
            "-blockdev", f"driver=throttle,node-name={n.top},throttle-group={n.group},file={n.fmt}",
            "-device", f"virtio-blk-pci,drive={n.top},id={n.device},serial={d.name},bus=hp{d.port},"
                       "werror=enospc,rerror=report",
        ]  # fmt: skip
    return args


def _nat(spec: VMSpec, ident: Identity, paths: VMPaths, att: Attachments) -> list[str]:
    """net0, QEMU's user networking: NAT with outbound access, no root; forwards bind on the host side only.
    ``nat_restricted`` (a sandbox from a template, whose saved machine has this NIC): the same netdev id and device,
    so the saved state loads, but ``restrict=on`` (slirp answers ARP and DHCP itself and drops every datagram and
    connection the guest starts towards the host or beyond; a TCP SYN gets a RST) and no forwards at all.
    ``nat_capture``: QEMU's filter-dump on the netdev's receive queue, i.e. every frame the guest sends, into a pcap."""
    if not spec.nat:  # a sandbox's `--net none` from an image: no NAT NIC at all, not a NIC with its link down
        return []
    if spec.nat_restricted:
        user = "user,id=net0,restrict=on"
    else:
        fwds = [f"hostfwd={p.proto}:{p.host_addr}:{p.host_port}-:{p.guest_port}" for p in spec.ports]
        if att.ssh_port is not None:
            fwds.insert(0, f"hostfwd=tcp:127.0.0.1:{att.ssh_port}-:22")
        user = ",".join(["user,id=net0", *fwds])
    args = ["-netdev", user, "-device", f"virtio-net-pci,netdev=net0,mac={ident.mac}"]
    if spec.nat_capture:
        args += ["-object", f"filter-dump,id=dump0,netdev=net0,queue=rx,file={paths.nat_pcap}"]
    return args


def _network(spec: VMSpec, ident: Identity, paths: VMPaths, att: Attachments) -> list[str]:
    args = _nat(spec, ident, paths, att)
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
        # Corral's command channel (corral.engine.guest_channel): a shell started in a template's source reads it.
        "-chardev", f"socket,id={guest_channel.CHARDEV_ID},path={paths.channel_socket},server=on,wait=off",
        "-device", f"virtserialport,bus=vser0.0,chardev={guest_channel.CHARDEV_ID},name={guest_channel.PORT_NAME}",
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


def _devices(spec: VMSpec) -> list[str]:
    # pvpanic turns a guest kernel panic into a GUEST_PANICKED event; virtio-rng gives the guest entropy early.
    return [*ARCHES[spec.arch].panic, "-device", "virtio-rng-pci", "-action", "panic=shutdown"]


#: The balloon's QOM id (QMP: /machine/peripheral/balloon0) and how often QEMU asks the guest for its memory
#: statistics (seconds; `corral show` reports the last ones).
BALLOON_ID = "balloon0"
BALLOON_STATS_INTERVAL = 5


def _balloon(spec: VMSpec, memory: MemoryFile | None) -> list[str]:
    """The memory balloon of a ``--balloon`` VM: free page reporting gives the host back what the guest frees,
    ``deflate-on-oom`` lets the guest take ballooned memory back rather than kill a process. Never with guest RAM in
    a file: QEMU 7.2 discards a reported (or ballooned) range of a file-backed RAM block by punching a hole in the
    FILE (softmmu/physmem.c ram_block_discard_range, even for a private mapping), which would zero a template's
    memory under every VM sharing it (docs/explanation/memory.md)."""
    if not spec.balloon:
        return []
    if memory is not None:
        raise ValueError("a VM whose memory is a file (a template's) cannot have a balloon")
    return ["-device", f"virtio-balloon-pci,id={BALLOON_ID},free-page-reporting=on,deflate-on-oom=on,"
                       f"guest-stats-polling-interval={BALLOON_STATS_INTERVAL}"]


def _mount_slots(paths: VMPaths, mounts: tuple[MountAttachment, ...]) -> list[str]:
    """Every shared-folder slot (:data:`MOUNT_SLOTS`), used or not, so a folder can be added while the VM runs: its
    root port and its two fsdevs, and the devices of the mounts plugged at start. ``security_model=none``: files the
    guest creates belong to the user QEMU runs as, the guest's chown/chmod of them are ignored rather than stored in
    xattrs of the user's files (``mapped-xattr``); ``passthrough`` would need root. ``multidevs=remap``: a folder
    spanning several host file systems gets no clashing inode numbers in the guest."""
    args: list[str] = []
    for n in range(MOUNT_SLOTS):
        for ro in ("ro", "rw"):
            args += ["-fsdev", f"local,id=fs{n}{ro},path={paths.mount_slot(n)},security_model=none,"
                               f"multidevs=remap{',readonly=on' if ro == 'ro' else ''}"]
        args += ["-device", f"pcie-root-port,id=mp{n},chassis={HOTPLUG_PORTS + 1 + n},io-reserve=0"]
    for m in mounts:
        if m.plugged:
            args += ["-device", f"virtio-9p-pci,id={m.device},fsdev={m.fsdev},mount_tag={m.tag},bus=mp{m.slot}"]
    return args


def _display(spec: VMSpec, paths: VMPaths) -> list[str]:
    """A ``display: vnc`` VM's virtual screen (std VGA on x86_64, virtio-gpu where there is no VGA), a USB tablet
    (absolute pointer: the browser's mouse lands where it points) and QEMU's VNC server on a unix socket in the VM's
    directory: only the daemon (the web page's /v1/vms/NAME/vnc websocket) reaches it, never the network."""
    if spec.display != "vnc":
        return []
    screen = "VGA" if spec.arch == Arch.X86_64 else "virtio-gpu-pci"
    return ["-device", screen, "-device", "qemu-xhci,id=xhci", "-device", "usb-tablet,bus=xhci.0",
            "-vnc", f"unix:{paths.vnc_socket}"]


#: An unprivileged QEMU (spec ``unprivileged``): QEMU 7.2 installs its seccomp filter before ``-runas`` drops root,
#: so ``elevateprivileges=deny`` would kill it at its own setuid (SIGSYS, exit 159: tried); allowing the set*id calls
#: gives nothing once it runs as RUNAS_USER (real, effective and saved uid all dropped: nothing can regain root).
SANDBOX_UNPRIVILEGED = "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"
RUNAS_USER = "nobody"


def _safety(spec: VMSpec) -> list[str]:
    sandbox = ["-sandbox", SANDBOX_UNPRIVILEGED, "-runas", RUNAS_USER] if spec.unprivileged else ["-sandbox", SANDBOX]
    return ["-nodefaults", "-no-user-config", "-display", "none", *sandbox, "-msg", "timestamp=on"]


def build_argv(
    spec: VMSpec, boot: BootSource, paths: VMPaths, host: HostConfig, ident: Identity,
    att: Attachments = Attachments(), memory: MemoryFile | None = None,
) -> list[str]:
    """The whole QEMU command line for ``spec``. Pure: same inputs, same list."""
    return [
        qemu_binary(spec.arch, host.qemu_binary),
        *_identity(spec, ident),
        *_machine(spec, host),
        *_resources(spec),
        *_memory(spec, memory),
        *_safety(spec),
        *_boot(spec, boot),
        *_root_disk(boot, paths, att.chain),
        *_network(spec, ident, paths, att),
        *_seed(att),
        *_guest_agent(paths),
        *_serial(paths),
        *_monitor(paths),
        *_devices(spec),
        *_hotplug_ports(),  # last: the ports take the next free slots, every other device keeps its address
        *_extra_disks(att.disks),
        *_balloon(spec, memory),  # after the ports: with or without it, every other device keeps its address
        *_mount_slots(paths, att.mounts),  # the mount ports came after every other device
        *_display(spec, paths),  # last: with or without a screen, every other device keeps its address
    ]
