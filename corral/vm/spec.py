"""The VM spec: the one model of what a VM is, used by the API, the CLI, the store (and later the fleet file).

Validated at the boundary: a spec that constructs is well-formed. What depends on the host (the image exists, the
memory fits, the name is free) is checked by :class:`corral.vm.service.VMService`, which knows the host.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from corral.idle.policy import IdlePolicy
from corral.vm import expiry
from corral.vm import labels as lbl
from corral.vm.arch import IMAGE_NAME, Arch, host_arch, image_ref
from corral.vm.expiry import ExpiryAction
from corral.vm.sizes import parse_size

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,61}[a-z0-9]$|^[a-z]$")

MIN_MEMORY_MIB = 64
MAX_MEMORY_MIB = 1 << 20  # 1 TiB
MAX_VCPUS = 255
MAX_DISK_BYTES = 16 << 40  # 16 TiB
MAX_COMMAND = 768  # characters of an OCI VM's command: base64 of it must fit the kernel's 2048-byte command line


class RestartPolicy(StrEnum):
    """What the daemon does when a VM stops without being asked to (Docker's names)."""

    NEVER = "never"
    ON_FAILURE = "on-failure"  # QEMU died, the guest panicked, or an OCI image's main process exited non-zero
    ALWAYS = "always"  # also when the guest powered itself off


def _memory_mib(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return parse_size(v, default_unit="M") // (1 << 20)
        except ValueError as exc:
            raise ValueError(str(exc)) from exc
    return v


def _disk_bytes(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return parse_size(v, default_unit="G")
        except ValueError as exc:
            raise ValueError(str(exc)) from exc
    return v


MemoryMiB = Annotated[int, BeforeValidator(_memory_mib)]
DiskBytes = Annotated[int, BeforeValidator(_disk_bytes)]


PORT_RE = re.compile(r"^(?:(?P<addr>[0-9.]+):)?(?P<host>\d+):(?P<guest>\d+)(?:/(?P<proto>tcp|udp))?$")


class PortForward(BaseModel):
    """A host port forwarded to a guest port through the VM's NAT network. Written `[ADDR:]HOST:GUEST[/udp]`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host_addr: str = Field(default="127.0.0.1", description="host address to listen on (default: loopback only)")
    host_port: int = Field(ge=1, le=65535)
    guest_port: int = Field(ge=1, le=65535)
    proto: str = Field(default="tcp", pattern="^(tcp|udp)$")

    @classmethod
    def parse(cls, text: str) -> PortForward:
        m = PORT_RE.match(text.strip())
        if not m:
            raise ValueError(f"{text!r} is not a port forward: use HOST:GUEST, ADDR:HOST:GUEST or HOST:GUEST/udp")
        return cls(host_addr=m["addr"] or "127.0.0.1", host_port=int(m["host"]), guest_port=int(m["guest"]),
                   proto=m["proto"] or "tcp")

    def __str__(self) -> str:
        return f"{self.host_addr}:{self.host_port}:{self.guest_port}/{self.proto}"

    def key(self) -> tuple[str, str, int]:
        """What must be unique on the host: protocol, address, port."""
        return (self.proto, self.host_addr, self.host_port)


def _ports(v: Any) -> Any:
    if isinstance(v, list):
        return [PortForward.parse(p) if isinstance(p, str) else p for p in v]
    return v


#: Shared folders per VM: each has its own PCIe root port (corral.engine.cmdline.MOUNT_SLOTS).
MAX_MOUNTS = 4
#: Guest directories a shared folder may not cover: the guest's own system, which it needs to run.
GUEST_SYSTEM_DIRS = frozenset({"/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run",
                               "/sbin", "/sys", "/usr", "/var"})
#: Guest trees no shared folder may go under (kernel file systems).
GUEST_VIRTUAL_TREES = ("/proc/", "/sys/", "/dev/")


def _absolute(path: str, what: str) -> str:
    """``path`` normalized (no ``.``, ``..`` or doubled ``/``); it must be absolute and one line."""
    if not path.startswith("/"):
        raise ValueError(f"{what} {path!r} is not absolute: give a path starting with '/'")
    if any(ord(c) < 32 for c in path):
        raise ValueError(f"{what} {path!r} has control characters")
    return os.path.normpath(path).replace("//", "/")


class Mount(BaseModel):
    """A host directory shared with the guest (virtio-9p), read-only unless ``read_only`` is false. Written
    ``HOST[:GUEST][:ro|rw]``; the guest directory defaults to the host path (as Lima does).

    Only the form is checked here; that the host directory exists and may be shared is the host's business
    (corral.mounts.host.check_host), so a stored spec still loads when the directory has since gone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(description="absolute host directory (stored resolved: no symlinks)")
    guest: str = Field(default="", description="absolute guest directory; default: the host path")
    read_only: bool = Field(default=True, description="the guest cannot write (enforced by QEMU on the host)")

    @classmethod
    def parse(cls, text: str) -> Mount:
        parts = text.split(":")
        mode = parts.pop() if len(parts) > 1 and parts[-1] in ("ro", "rw") else "ro"
        if not parts[0] or len(parts) > 2:
            raise ValueError(f"{text!r} is not a mount: use HOST_DIR[:GUEST_DIR][:ro|rw] (paths without ':')")
        return cls(host=parts[0], guest=parts[1] if len(parts) == 2 else "", read_only=mode == "ro")

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return _absolute(v, "host directory")

    @model_validator(mode="after")
    def _guest(self) -> Mount:
        guest = _absolute(self.guest or self.host, "guest directory")
        if guest in GUEST_SYSTEM_DIRS or guest.startswith(GUEST_VIRTUAL_TREES):
            raise ValueError(f"guest directory {guest!r} is part of the guest's system: share it at another "
                             "directory, e.g. HOST:/mnt/NAME")
        object.__setattr__(self, "guest", guest)
        return self

    def __str__(self) -> str:
        return f"{self.host}:{self.guest}:{'ro' if self.read_only else 'rw'}"


def _mounts(v: Any) -> Any:
    if isinstance(v, list):
        return [Mount.parse(m) if isinstance(m, str) else m for m in v]
    return v


class Placement(BaseModel):
    """Where a cluster may run the VM (docs/explanation/cluster.md); a host alone ignores it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str | None = Field(default=None, description="only this host (`corral host ls`)")
    host_labels: dict[str, str] = Field(default_factory=dict, description="only hosts with all these labels")
    strategy: Literal["spread", "pack"] = Field(default="spread", description="spread: the host with the most room "
                                                "left; pack: the fullest host it still fits")
    group: str | None = Field(default=None, description="anti-affinity: VMs of one group go to different hosts "
                              "while there are enough (a fleet's members: the fleet's name)")
    ha: bool = Field(default=False, description="high availability: when its host goes down (its lease in etcd "
                     "expires), the VM is started on another host from its newest backup in the cluster's HA "
                     "repository, once the dead host is fenced (docs/explanation/cluster.md)")


class VMSpec(BaseModel):
    """What a VM is. Sizes accept numbers or human strings: memory "512M" or 512 (MiB), disk "10G" or bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="DNS label: lower-case letters, digits and '-', 1-63 characters")
    image: str = Field(default="tiny", description="an image in the store: `corral images ls`")
    arch: Arch = Field(default_factory=host_arch, description="guest architecture: x86_64, aarch64 or riscv64; "
                       "default: the host's. A foreign one runs under TCG (docs/explanation/architectures.md)")
    vcpus: int = Field(default=1, ge=1, le=MAX_VCPUS)
    memory: MemoryMiB = Field(default=256, ge=MIN_MEMORY_MIB, le=MAX_MEMORY_MIB, description="MiB")
    disk: DiskBytes | None = Field(
        default=None, ge=1 << 20, le=MAX_DISK_BYTES, description="root disk bytes; default: the image's size"
    )
    restart: RestartPolicy = RestartPolicy.NEVER
    ports: Annotated[list[PortForward], BeforeValidator(_ports)] = Field(
        default_factory=list, description="host port forwards: '8080:80', '127.0.0.1:5353:53/udp'"
    )
    networks: list[str] = Field(default_factory=list, description="private networks to attach (`corral network ls`)")
    cloud_init: str | None = Field(default=None, description="cloud-init user-data (a NoCloud seed is made)")
    ssh_keys: list[str] = Field(default_factory=list, description="public keys authorized for the default user")
    hostname: str | None = Field(default=None, description="guest hostname; default: the VM name")
    owner: str = Field(default="", description="who the VM belongs to; default: the user who created it (the "
                       "X-Corral-User header the client sends)")
    project: str = Field(default="default", description="the project it belongs to")
    labels: dict[str, str] = Field(default_factory=dict, description="Kubernetes-style labels: "
                                   "[prefix/]name = value, e.g. env=dev, team=web")
    description: str = Field(default="", max_length=lbl.MAX_DESCRIPTION, description="free text")
    ttl: float | None = Field(default=None, gt=0, le=expiry.MAX_TTL, description="time to live, seconds from "
                              "creation (the daemon sets expires_at from it); also accepts '2h', '7d'")
    expires_at: datetime | None = Field(default=None, description="when the VM expires (UTC); default: from ttl, "
                                        "else from its project's default TTL, else never")
    on_expiry: ExpiryAction | None = Field(default=None, description="what happens at expiry: stop (clean "
                                           "power-off, then kill), suspend (to disk) or delete (with its disks; "
                                           "after a final backup with backup_before_delete); default: the "
                                           "project's, else stop")
    backup_before_delete: bool = Field(default=False, description="take a final backup (into the default "
                                       "repository) before an expired VM is deleted; not deleted if it fails")
    idle: IdlePolicy | None = Field(default=None, description="idle control: suspend the VM to disk once its CPU, "
                                    "disk and network stay under thresholds for a while (see docs/explanation/"
                                    "idle.md); default: its project's; a policy with suspend_after null is off")
    mounts: Annotated[list[Mount], BeforeValidator(_mounts)] = Field(
        default_factory=list, description=f"shared host directories (at most {MAX_MOUNTS}): 'HOST[:GUEST][:ro|rw]' "
        "or {host, guest, read_only}; read-only by default (see docs/explanation/mounts.md)")
    command: list[str] | None = Field(default=None, description="OCI images: the arguments that replace the image's "
                                      "cmd (as `docker run IMAGE ARGS`); default: the image's cmd "
                                      "(see docs/explanation/oci.md)")
    balloon: bool = Field(default=False, description="a virtio memory balloon with free page reporting: memory the "
                          "guest frees returns to the host, and `corral balloon` sets a live memory target (see "
                          "docs/explanation/memory.md); not for VMs made from templates")
    nat: bool = Field(default=True, description="QEMU's user-mode NAT NIC (net0: outbound access, SSH and port "
                      "forwards); false: no such NIC at all (a sandbox's `--net none`: docs/explanation/sandbox.md)")
    nat_restricted: bool = Field(default=False, description="the NAT NIC kept (a template's saved machine has it) "
                                 "but cut off: QEMU's `restrict=on` and no SSH or port forwards, so the guest "
                                 "reaches nothing on the host or beyond (a sandbox from a template: "
                                 "docs/explanation/sandbox.md)")
    nat_capture: bool = Field(default=False, description="every frame the guest sends on the NAT NIC is written to "
                              "the VM's net0.pcap (QEMU's filter-dump; a sandbox's egress-log from a template)")
    unprivileged: bool = Field(default=False, description="QEMU drops root for the `nobody` user once it is set up "
                               "(-runas; the daemon must run as root); no private networks then (their switch "
                               "sockets are the daemon's user's); sandboxes with --net none get it")
    ephemeral: bool = Field(default=False, description="disposable: the root disk reverts to its base (the image, "
                            "or the template's disk) at every start, a fresh overlay each time")
    nested: bool = Field(default=False, description="nested virtualization: the guest CPU gets the host's vmx "
                         "(Intel) or svm (AMD) extension, so the guest can run VMs of its own under KVM; needs KVM "
                         "with the kvm_intel/kvm_amd module's nested=1, refused under TCG (see docs/explanation/"
                         "nested.md)")
    display: Literal["none", "vnc"] = Field(default="none", description="vnc: a virtual screen and a USB tablet, "
                                             "shown by a VNC server on a unix socket in the VM's directory (never "
                                             "on the network), for the web page's graphical console (see "
                                             "docs/explanation/web.md); none: serial console only")
    placement: Placement = Field(default_factory=Placement, description="in a cluster: which hosts may run it")

    @model_validator(mode="after")
    def _nat_needed(self) -> VMSpec:
        if not self.nat and self.ports:
            raise ValueError("port forwards need the NAT NIC: drop the ports or keep nat on")
        if (self.nat_restricted or self.nat_capture) and not self.nat:
            raise ValueError("nat_restricted and nat_capture are about the NAT NIC: keep nat on")
        if self.nat_restricted and self.ports:
            raise ValueError("a restricted NAT NIC has no port forwards: drop the ports or nat_restricted")
        if self.unprivileged and (self.networks or self.mounts):
            raise ValueError("an unprivileged QEMU cannot reach private networks' switches or shared folders: "
                             "drop them or unprivileged")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(
                f"{v!r} is not a valid VM name: use 1-63 lower-case letters, digits and '-', "
                "starting with a letter and not ending with '-'"
            )
        return v

    @field_validator("ports")
    @classmethod
    def _unique_ports(cls, v: list[PortForward]) -> list[PortForward]:
        keys = [p.key() for p in v]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            proto, addr, port = sorted(dup)[0]
            raise ValueError(f"host port {addr}:{port}/{proto} is forwarded twice")
        return v

    @field_validator("mounts")
    @classmethod
    def _mount_list(cls, v: list[Mount]) -> list[Mount]:
        if len(v) > MAX_MOUNTS:
            raise ValueError(f"{len(v)} mounts: a VM has at most {MAX_MOUNTS} shared folders")
        guests = [m.guest for m in v]
        if dup := sorted({g for g in guests if guests.count(g) > 1}):
            raise ValueError(f"guest directory {dup[0]!r} is mounted twice: give each mount its own GUEST_DIR")
        return v

    @field_validator("networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for n in v:
            if not NAME_RE.match(n):
                raise ValueError(f"{n!r} is not a valid network name")
        if len(set(v)) != len(v):
            raise ValueError("a network is listed twice")
        return v

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str | None) -> str | None:
        if v is not None and not NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a valid hostname: use lower-case letters, digits and '-'")
        return v

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("the command is empty: leave it out to run the image's own cmd")
            if any("\0" in w for w in v) or sum(len(w) + 3 for w in v) > MAX_COMMAND:
                raise ValueError(f"the command is longer than {MAX_COMMAND} characters or has a NUL: it goes on "
                                 "the kernel command line; put a long one in a script in the image")
        return v

    @field_validator("owner")
    @classmethod
    def _owner(cls, v: str) -> str:
        return lbl.check_owner(v) if v else v

    @field_validator("project")
    @classmethod
    def _project(cls, v: str) -> str:
        return lbl.check_project(v)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        return lbl.check_labels(v)

    @field_validator("description")
    @classmethod
    def _description(cls, v: str) -> str:
        if any(ord(c) < 32 and c not in "\t" for c in v):
            raise ValueError("the description must be one line of text (no control characters)")
        return v

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, v: Any) -> Any:
        return expiry.parse_duration(v) if isinstance(v, str) else v

    @field_validator("expires_at")
    @classmethod
    def _expires_at(cls, v: datetime | None) -> datetime | None:
        return expiry.to_utc(v) if v is not None else v

    @property
    def guest_hostname(self) -> str:
        return self.hostname or self.name

    @property
    def image_ref(self) -> str:
        """The image store's key of this VM's image: its name and architecture (corral.vm.arch.image_ref)."""
        return image_ref(self.image, self.arch)

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not IMAGE_NAME.match(v):
            raise ValueError(f"{v!r} is not a valid image name")
        return v
