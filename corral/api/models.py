"""Wire models, shared by the server (``corral.api``) and the client (``corral.client``); never redefined."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from corral.idle.policy import IdlePolicy as IdlePolicy  # re-exported: wire models live with the logic
from corral.idle.policy import IdleStatus as IdleStatus
from corral.images.artifacts import Manifest
from corral.memory.models import BalloonRequest as BalloonRequest  # re-exported: wire models live with the logic
from corral.memory.models import BalloonStatus as BalloonStatus
from corral.mounts.models import MountCreate as MountCreate  # re-exported: shared folders' wire models
from corral.mounts.models import MountInfo as MountInfo
from corral.storage.disk_models import DiskCreate as DiskCreate  # re-exported: extra disks' wire models
from corral.storage.disk_models import DiskLimits as DiskLimits
from corral.storage.disk_models import DiskResize as DiskResize
from corral.storage.disk_models import ExtraDiskInfo as ExtraDiskInfo
from corral.storage.disk_models import ImageCheckInfo as ImageCheckInfo
from corral.vm.capacity import CapacityAmounts as CapacityAmounts  # re-exported: wire models live with the logic
from corral.vm.capacity import CapacityInfo as CapacityInfo
from corral.vm.expiry import ExpiryAction
from corral.vm.report import Report as Report  # re-exported: the report's wire models live with its logic
from corral.vm.report import ReportGroup as ReportGroup
from corral.vm.report import ReportRow as ReportRow
from corral.vm.report import ReportTotals as ReportTotals
from corral.vm.spec import MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB, MemoryMiB, RestartPolicy, VMSpec
from corral.vm.states import VMState

API_PREFIX = "/v1"
#: The header the client sends with the local user name: the actor recorded on events, and a new VM's owner.
USER_HEADER = "X-Corral-User"
#: The largest integer the store (SQLite INTEGER) and QEMU (int64) hold: a bound for counts and sizes on the wire.
MAX_INT64 = 2**63 - 1


class DiskInfo(BaseModel):
    name: str
    path: str
    format: str
    virtual_size: int
    backing: str | None = None
    backing_format: str | None = None


class VMInfo(BaseModel):
    """What `corral show` and `corral ls` print."""

    name: str
    id: str
    spec: VMSpec
    state: str
    state_reason: str = ""
    mac: str
    created_at: float
    last_exit_reason: str = ""
    exit_code: int | None = Field(default=None, description="OCI images: the exit code of the main process in the "
                                  "VM's last run (the VM powers off when it exits); null: none yet")
    restart_count: int = 0
    pid: int | None = None
    accel: str | None = None
    started_at: float | None = None
    uptime: float | None = None
    agent_ready: bool = False
    addresses: list[str] = Field(default_factory=list)
    disks: list[DiskInfo] = Field(default_factory=list)
    expires_in: float | None = Field(default=None, description="seconds until spec.expires_at (negative: expired)")
    expiring: bool = Field(default=False, description="inside the warning window before its expiry")
    idle: IdleStatus | None = Field(default=None, description="idle control: the policy that applies, activity, "
                                    "whether it was suspended for being idle")
    balloon: BalloonStatus | None = Field(default=None, description="a running --balloon VM's balloon and the "
                                          "guest's memory (`corral show` only)")
    host: str = Field(default="", description="in a cluster: the host that runs it (`corral host ls`); "
                      "empty on a host alone")


class ExtendRequest(BaseModel):
    """Push a VM's expiry out: ``by`` seconds (from its expiry, or from now once passed), or ``to`` a time."""

    by: float | None = Field(default=None, gt=0, le=10 * 365 * 86400)
    to: datetime | None = None


class ProjectInfo(BaseModel):
    name: str
    default_ttl: float | None = Field(default=None, description="seconds; a VM created without an expiry of its "
                                      "own gets this TTL")
    on_expiry: ExpiryAction = ExpiryAction.STOP
    vms: int = 0
    idle: IdlePolicy | None = Field(default=None, description="the idle policy of its VMs that have none of their "
                                    "own")


class ProjectSet(BaseModel):
    default_ttl: float | None = Field(default=None, gt=0, le=10 * 365 * 86400,
                                      description="seconds; null: no default TTL")
    on_expiry: ExpiryAction = ExpiryAction.STOP


class StopRequest(BaseModel):
    timeout: float = Field(default=30.0, ge=0, le=3600)
    force: bool = True


class RestartRequest(BaseModel):
    hard: bool = False
    timeout: float = Field(default=120.0, ge=1, le=3600)


class WaitRequest(BaseModel):
    timeout: float = Field(default=120.0, ge=0, le=3600)


class WaitForRequest(BaseModel):
    """`corral wait`: until the VM is in ``state``, or (``ready``, the default when no state is given) until its
    guest agent answered and the guest was provisioned."""

    state: VMState | None = None
    ready: bool = False
    timeout: float = Field(default=300.0, ge=0, le=86400)


class SSHInfo(BaseModel):
    """How to reach a ready VM's SSH server: what `corral shell` passes to ssh (the host key is pinned, never
    trusted on first use)."""

    host: str
    port: int
    user: str
    identity_file: str
    known_hosts: str


class ExecRequest(BaseModel):
    argv: list[str] = Field(min_length=1)
    env: dict[str, str] | None = None
    cwd: str | None = None
    stdin_b64: str | None = None
    timeout: float | None = Field(default=None, gt=0, le=86400)


class ExecChunk(BaseModel):
    """One line of the exec stream (NDJSON): output as it comes, then one exit line."""

    kind: Literal["stdout", "stderr", "exit", "error"]
    data_b64: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    message: str | None = None
    error: str | None = Field(default=None, description="kind error: the error's class, as in an error response")
    status: int | None = Field(default=None, description="kind error: the HTTP status it would have had before "
                               "the stream began (409: the VM's state changed, e.g. paused; 502: the guest agent)")


class BuildEvent(BaseModel):
    """One line of the image build stream (NDJSON)."""

    kind: Literal["progress", "done", "error"]
    stage: str = ""
    done: int = 0
    total: int | None = None
    manifest: Manifest | None = None
    message: str | None = None
    error: str | None = Field(default=None, description="the error class, on kind=error")


class ImportRequest(BaseModel):
    """Import a qcow2 or raw disk image from outside: an absolute file path on the host, a URL or a catalog name."""

    source: str
    name: str | None = Field(default=None, description="image name; default: the catalog entry's")
    sha256: str | None = Field(default=None, description="the expected SHA256 of the file as given")
    format: Literal["qcow2", "raw"] | None = Field(default=None, description="default: from the name and header")
    firmware: Literal["bios", "uefi"] = "bios"


class ImportOciRequest(BaseModel):
    """Import an OCI image: an OCI layout ``DIR[:TAG]`` or a ``docker save``/``podman save`` tarball (absolute
    paths on the host), or a registry reference (``docker://NAME[:TAG]``), through skopeo and umoci."""

    ref: str
    name: str | None = Field(default=None, description="image name; default: oci- and the digest's first 12 hex "
                             "digits (the same image is imported once)")


class EventInfo(BaseModel):
    """Who did what, when, with what result: ``actor`` is the API user (or "corrald" for what the daemon did by
    itself), ``owner`` the VM's owner at the time, ``result`` "ok" or "error" (then ``data.error`` says why)."""

    id: int
    ts: float
    vm: str | None
    type: str
    message: str
    data: dict[str, object] = Field(default_factory=dict)
    actor: str = ""
    owner: str = ""
    result: str = "ok"


class LabelsRequest(BaseModel):
    """Labels to set and keys to remove (removing an absent key is not an error)."""

    set: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)


class SpecUpdate(BaseModel):
    """Spec fields to change on an existing VM (``PATCH /v1/vms/{name}``); absent fields stay as they are.

    Labels, description and restart policy apply at once; vcpus, memory and balloon are used from the next start (a
    running VM keeps its QEMU until it is stopped and started again)."""

    model_config = ConfigDict(extra="forbid")

    labels: dict[str, str] | None = Field(default=None, description="the whole new label set")
    description: str | None = None
    restart: RestartPolicy | None = None
    vcpus: int | None = Field(default=None, ge=1, le=MAX_VCPUS)
    memory: MemoryMiB | None = Field(default=None, ge=MIN_MEMORY_MIB, le=MAX_MEMORY_MIB, description="MiB")
    idle: IdlePolicy | None = Field(default=None, description="its own idle policy (at once); null: its project's")
    balloon: bool | None = Field(default=None, description="the memory balloon, from the next start (not for a VM "
                                 "made from a template)")


class DaemonStatus(BaseModel):
    version: str
    pid: int
    home: str
    socket: str
    accel: str | None
    accel_reason: str | None
    qemu: str
    vms: dict[str, int]


class PortRequest(BaseModel):
    """A forward to add, written `[ADDR:]HOST:GUEST[/udp]`."""

    forward: str = Field(examples=["8080:80", "127.0.0.1:5353:53/udp"])


class NetworkCreate(BaseModel):
    name: str
    subnet: str | None = Field(default=None, description="IPv4 subnet, e.g. 10.1.2.0/24; default: a free /24")
    bridge: bool = Field(default=False, description="a Linux bridge with tap devices (needs root)")


class NetworkMember(BaseModel):
    vm: str
    mac: str
    address: str


class NetworkInfo(BaseModel):
    name: str
    subnet: str
    kind: Literal["private", "bridge"]
    bridge: str | None = None
    created_at: float
    switch_pid: int | None = None
    vms: list[str] = Field(default_factory=list, description="VMs whose spec lists the network")
    members: list[NetworkMember] = Field(default_factory=list)


class FileInfo(BaseModel):
    """A guest path for `corral cp` (symlinks followed). ``mode`` is the permission bits, ``mtime`` in seconds."""

    path: str
    kind: Literal["file", "dir", "other", "missing"]
    size: int = 0
    mode: int = 0
    mtime: int = 0


class CopyChannel(BaseModel):
    """Whether `corral cp` can go over a hot-plugged virtio-serial port of this VM now, and if not, why."""

    available: bool
    reason: str = ""


class UploadLine(BaseModel):
    """One line of a `corral cp` upload's answer (NDJSON, ``POST /vms/NAME/files/virtio/uploads``): first where to
    write the bytes (``socket``: the host end of the port plugged for the copy), then the result once the guest side
    finished (``done``, with the file written), or an ``error`` with the status it would have had as a response."""

    kind: Literal["socket", "done", "error"]
    socket: str | None = None
    port: str | None = None
    file: FileInfo | None = None
    message: str | None = None
    error: str | None = None
    status: int | None = None


class ErrorBody(BaseModel):
    error: str
    message: str


class QuotaSet(BaseModel):
    """Limits to set for a project or owner; a field left out keeps its current value (null: no limit)."""

    vms: int | None = Field(default=None, ge=0, le=MAX_INT64)
    vcpus: int | None = Field(default=None, ge=0, le=MAX_INT64)
    memory: int | None = Field(default=None, ge=0, le=MAX_INT64, description="MiB")
    disk: int | None = Field(default=None, ge=0, le=MAX_INT64, description="bytes")


class QuotaUsage(BaseModel):
    vms: int
    vcpus: int
    memory: int = Field(description="MiB")
    disk: int = Field(description="bytes")


class QuotaInfo(BaseModel):
    """A quota and what its project or owner holds now (every defined VM counts, whatever its state)."""

    scope: Literal["project", "owner"]
    name: str
    vms: int | None = None
    vcpus: int | None = None
    memory: int | None = Field(default=None, description="MiB")
    disk: int | None = Field(default=None, description="bytes")
    used: QuotaUsage



# -- snapshots and clones (corral.storage) -----------------------------------------------------------------------
class SnapshotCreate(BaseModel):
    name: str
    memory: bool = Field(default=False, description="whole machine: memory and devices too (running or paused VM)")
    freeze: bool = Field(default=True, description="freeze the guest's file systems around a disk snapshot")


class SnapshotInfo(BaseModel):
    """One snapshot in a VM's tree: ``parent`` the snapshot it descends from, ``current`` whether the VM's present
    state descends from it (it is the VM's latest snapshot or the one last reverted to)."""

    name: str
    vm: str
    parent: str | None
    created_at: float
    memory: bool
    current: bool
    size: int = Field(description="bytes on the host: its layer and saved machine state")
    note: str = Field(description="how it was taken: frozen file systems, or why not")


class RevertRequest(BaseModel):
    force: bool = Field(default=False, description="revert a running, paused or suspended VM (its state is lost)")


class CloneRequest(BaseModel):
    name: str = Field(description="the new VM's name")
    full: bool = Field(default=False, description="an independent copy, not a linked clone")
    snapshot: str | None = Field(default=None, description="clone the source as it was at this snapshot")


class CloneEvent(BaseModel):
    """One line of the clone stream (NDJSON): progress (percent, a full clone), then done with the new VM."""

    kind: Literal["progress", "done", "error"]
    percent: float = 0.0
    vm: VMInfo | None = None
    seconds: float | None = None
    message: str | None = None
    error: str | None = Field(default=None, description="the error class, on kind=error")


class ExportRequest(BaseModel):
    """Export a VM to an archive on the daemon's host (the CLI sends an absolute path)."""

    path: str = Field(description="absolute path of the archive to write; it must not exist")
    state: bool = Field(default=False, description="include the machine state (running, paused or suspended VM)")


class VMImportRequest(BaseModel):
    """Recreate a VM from an export archive on the daemon's host."""

    path: str = Field(description="absolute path of the archive")
    name: str | None = Field(default=None, description="the new VM's name (default: the exported VM's)")


class PortableEvent(BaseModel):
    """One line of an export or import stream (NDJSON): progress in bytes, then done (or error)."""

    kind: Literal["progress", "done", "error"]
    done: int = 0
    total: int = 0
    vm: VMInfo | None = None
    size: int | None = Field(default=None, description="bytes of the archive, on an export's done")
    seconds: float | None = None
    message: str | None = None
    error: str | None = Field(default=None, description="the error class, on kind=error")


class PoolCreate(BaseModel):
    """Keep ``size`` paused VMs from ``template`` ready to hand out (1 to corral.pools.plan.MAX_SIZE; checked by the
    service, which says what is wrong)."""

    template: str
    size: int


class PoolResize(BaseModel):
    size: int


class PoolMemberInfo(BaseModel):
    name: str
    condition: str = Field(description="ready (paused, to hand out), filling, broken (to be replaced), unknown "
                           "(its state is unknown: left alone) or gone")
    state: str = Field(description="the VM's state")
    memory: int = Field(description="MiB it holds against the host (0 without a QEMU)")
    rss: int = Field(description="bytes its QEMU holds resident")


class PoolInfo(BaseModel):
    """A warm pool: its template, its size, its members and what they hold."""

    template: str
    size: int
    ready: int
    filling: int
    created_at: float
    members: list[PoolMemberInfo] = Field(default_factory=list)
    memory: int = Field(description="MiB its members hold against the host's capacity")
    rss: int = Field(description="bytes its members' QEMUs hold resident")
    note: str = Field(default="", description="why the pool is short, if its last fill failed")


class TemplateCreate(BaseModel):
    """Capture the running, ready VM ``source`` as template ``name`` (the source keeps running)."""

    name: str
    source: str


class TemplateInfo(BaseModel):
    """A template: what a VM launched from it gets, and the VMs that use it."""

    name: str
    source: str = Field(description="the VM it was captured from")
    image: str
    vcpus: int
    memory: int = Field(description="MiB")
    disk: int = Field(description="virtual size of its disk, bytes")
    created_at: float
    size: int = Field(description="bytes on the host (disk, memory and state files)")
    channel: bool = Field(False, description="captured with a shell waiting on Corral's guest channel: its VMs take "
                          "their identity through it, without spawning a process (else through the guest agent)")
    vms: list[str] = Field(default_factory=list, description="VMs made from it")
