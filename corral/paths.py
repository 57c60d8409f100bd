"""Every file name Corral uses, in one place (documented in docs/explanation/files.md).

The Corral home (``$CORRAL_HOME``, default ``~/.local/share/corral``) holds::

    corrald.sock        the REST API (unix socket, mode 0600)
    corrald.pid         the daemon's pid
    corrald.log         the daemon's log
    corral.db           SQLite store (WAL): VM definitions, runtime records, events
    images/<name>/      the image store: one directory per image, read-only files
    vms/<name>/         one directory per VM, mode 0700 (the files below)
    templates/<name>/   one directory per template (see :class:`TemplatePaths`), mode 0700

The build cache (``$CORRAL_CACHE``, default ``~/.cache/corral``) holds downloaded packages and built images, shared by
every Corral home on the host, so that tests with their own home do not build images again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DAEMON_SOCKET = "corrald.sock"
DAEMON_PID = "corrald.pid"
DAEMON_LOG = "corrald.log"
DATABASE = "corral.db"
IMAGES_DIR = "images"
VMS_DIR = "vms"
#: Disk layers (corral.storage): ``<id>.qcow2`` and, for whole-machine snapshots, ``<id>.state``; shared by VMs.
LAYERS_DIR = "layers"
BACKUPS_DIR = "backups"  # the default backup repository (corral.backup.repo)
TEMPLATES_DIR = "templates"
SANDBOX_DIR = "sandbox"  # a sandbox run's scratch (corral.sandbox): sink socket and log, raw disks; removed after

# Inside an image directory.
IMAGE_MANIFEST = "manifest.json"
IMAGE_KERNEL = "vmlinuz"
IMAGE_INITRD = "initrd.img"
IMAGE_DISK = "disk.qcow2"


@dataclass(frozen=True)
class VMPaths:
    """The files of one VM. The directory is private (0700): QMP, the agent and the console live here."""

    root: Path

    @property
    def disk(self) -> Path:
        """The root disk: a qcow2 overlay whose backing file is the image's disk."""
        return self.root / "disk.qcow2"

    @property
    def qmp_socket(self) -> Path:
        return self.root / "qmp.sock"

    @property
    def qga_socket(self) -> Path:
        return self.root / "qga.sock"

    @property
    def channel_socket(self) -> Path:
        """Host side of Corral's command channel into the guest (corral.engine.guest_channel)."""
        return self.root / "channel.sock"

    @property
    def console_socket(self) -> Path:
        return self.root / "console.sock"

    @property
    def vnc_socket(self) -> Path:
        """QEMU's VNC server of a ``display: vnc`` VM (the web page's graphical console), never on the network."""
        return self.root / "vnc.sock"

    @property
    def serial_log(self) -> Path:
        """Everything the guest wrote to its serial console, kept by QEMU even while the daemon is away."""
        return self.root / "serial.log"

    @property
    def qemu_log(self) -> Path:
        """QEMU's own stdout and stderr."""
        return self.root / "qemu.log"

    @property
    def state_file(self) -> Path:
        """The saved machine state (memory and devices) of a suspended VM: QEMU's migration stream."""
        return self.root / "state.bin"

    @property
    def migration_tls(self) -> Path:
        """During a live migration (corral.migration): ``keys.psk``, the pre-shared key QEMU encrypts the stream and
        the NBD disk copy with; removed after it."""
        return self.root / "migration-tls"

    @property
    def pidfile(self) -> Path:
        return self.root / "qemu.pid"

    @property
    def ssh_key(self) -> Path:
        """Corral's private key for this VM (``.pub`` beside it), installed in the guest at every boot."""
        return self.root / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        """The guest's SSH host keys, read through the guest agent (so `corral shell` never trusts on first use)."""
        return self.root / "known_hosts"

    @property
    def seed(self) -> Path:
        """The cloud-init NoCloud seed (ISO 9660, volume label cidata), when the spec asks for cloud-init."""
        return self.root / "seed.iso"

    @property
    def identity_reset(self) -> Path:
        """Present until a clone's first boot gave the guest its own identity (machine-id, hostname, host keys)."""
        return self.root / "identity-reset"

    @property
    def identity_pending(self) -> Path:
        """Present from a launch from a template's state until the guest took its own identity (its hostname, MAC,
        machine-id, keys): a daemon that died in between finds it at re-attach and has the identity taken then."""
        return self.root / "identity-pending"

    @property
    def backup_bitmap(self) -> Path:
        """Which backup (repository, id, top disk file) the disk's persistent dirty bitmap counts from."""
        return self.root / "backup-bitmap.json"

    def backup_target(self, tag: str) -> Path:
        """A temporary qcow2 that QEMU (or qemu-img) copies the disk into during a backup; removed after it."""
        return self.root / f"backup-{tag}.qcow2"

    @property
    def images_open(self) -> Path:
        """Present while a QEMU has the VM's images open; one left behind by a QEMU that did not exit cleanly
        (killed, crashed, the host went down) makes the next start check the images first (corral.storage.check)."""
        return self.root / "images-open"

    @property
    def disks_dir(self) -> Path:
        """The VM's extra disks (corral.storage.disks), one ``<disk>.qcow2`` each; deleted with the VM."""
        return self.root / "disks"

    def extra_disk(self, name: str) -> Path:
        return self.disks_dir / f"{name}.qcow2"

    @property
    def mounts_dir(self) -> Path:
        """Shared folders (corral.mounts): one symlink per slot, ``slotN`` -> the host directory, which QEMU's
        ``-fsdev`` of slot N opens when the slot's device is plugged; and ``layout.json``."""
        return self.root / "mounts"

    def mount_slot(self, slot: int) -> Path:
        return self.mounts_dir / f"slot{slot}"

    @property
    def mount_layout(self) -> Path:
        """Which mount sits in which slot in the VM's QEMU (JSON): what a suspended VM's saved state holds."""
        return self.mounts_dir / "layout.json"

    @property
    def nat_pcap(self) -> Path:
        """Every frame the guest sent on its NAT NIC (spec ``nat_capture``: QEMU's filter-dump, pcap format)."""
        return self.root / "net0.pcap"

    def nic_socket(self, network: str) -> Path:
        """This VM's end of a private network: a unix datagram socket the switch sends frames to."""
        return self.root / f"net-{network}.sock"


@dataclass(frozen=True)
class TemplatePaths:
    """The files of one template (``templates/<name>/``): read-only once made, shared by every VM made from it."""

    root: Path

    @property
    def disk(self) -> Path:
        """The source VM's disk at capture time, flattened into one standalone qcow2: the backing file of every
        VM made from the template."""
        return self.root / "disk.qcow2"

    @property
    def memory(self) -> Path:
        """The guest RAM at capture time, byte for byte (sparse): mapped privately (copy-on-write) by every VM made
        from the template, so the pages they only read are shared."""
        return self.root / "memory.ram"

    @property
    def state(self) -> Path:
        """The device state (QEMU's migration stream, saved with x-ignore-shared: no RAM in it)."""
        return self.root / "state.bin"

    @property
    def overlay(self) -> Path:
        """An empty qcow2 overlay on ``disk``, of the template's size, made with the template: each VM launched from
        it gets a copy as its disk (a file copy is a few hundred microseconds, qemu-img create a process). Templates
        made before it existed have none; their VMs' overlays are made with qemu-img."""
        return self.root / "overlay.qcow2"

    @property
    def spec(self) -> Path:
        """What a VM must match to load the state: image, vCPUs, memory, disk size (JSON)."""
        return self.root / "template.json"
