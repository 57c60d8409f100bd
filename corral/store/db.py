"""The SQLite store. One connection, used from the daemon's event loop; every call is a short local transaction.

Tables:
    vms       one row per VM: its spec (JSON of :class:`VMSpec`), state, identity (id, MAC) and last exit reason
    runtime   one row per VM with a QEMU process: pid, its start time in clock ticks (identity across pid reuse),
              when it started, the accelerator; written as soon as the pid is known, deleted when QEMU is gone
    events    the event log: every state change and operation, in order: who (``actor``: the user of the API
              request, "corrald" for what the daemon did by itself), the VM's ``owner`` then, what, when, and the
              ``result`` ("ok" or "error")
    networks  private networks: name, subnet, creation time (and the Linux bridge of a bridged network)
    attachments  one row per VM on a network: its stable MAC and address there (deleted with the VM)
    quotas    limits per project or owner (``scope``, ``name``): VMs, vCPUs, memory MiB, disk bytes; NULL = none
    projects  per-project settings: the default TTL (seconds) and expiry action given to a VM created without its own,
              and the default idle policy (JSON of :class:`IdlePolicy`) of its VMs that have none of their own
    layers    the qcow2 layers of VM disks (corral.storage): file, backing layer (NULL: on the image's disk, or a
              standalone disk), owning VM (NULL: shared, its VM deleted), purpose (``top``: a VM's writable layer;
              ``frozen``: read-only, under a snapshot, a clone or a newer layer); a file stays while anything uses it
    snapshots named snapshots of a VM: its parent in the tree, the frozen layer holding its disk, its machine state
              file (whole-machine snapshots); ``snapshot_current`` marks the snapshot each VM's state descends from
    disks     extra disks of a VM (corral.storage.disks): name, qcow2 file, virtual size, I/O limits (JSON of QEMU
              throttle-group fields), serial, the hot-plug port while attached (NULL: detached); deleted with the VM
    templates     captured VMs to launch from (corral.templates): name, source VM, what a VM from it must match
                  (image, vCPUs, memory MiB, disk bytes), creation time and size on disk
    template_vms  one row per VM made from a template (deleted with the VM); ``fresh`` = 1 until its first start
                  has loaded the template's state (later starts boot from its disk)
    operations    the journal of long operations under way (corral.operations): kind, VM, start time and what the
                  operation did so far (JSON); a row left at start-up is an operation a dead daemon did not finish
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.idle.policy import IdlePolicy
from corral.vm.quota import Quota
from corral.vm.spec import VMSpec
from corral.vm.states import VMState

SCHEMA = """
CREATE TABLE IF NOT EXISTS vms (
    name TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    state_reason TEXT NOT NULL DEFAULT '',
    mac TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_exit_reason TEXT NOT NULL DEFAULT '',
    restart_count INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS runtime (
    name TEXT PRIMARY KEY REFERENCES vms(name) ON DELETE CASCADE,
    pid INTEGER NOT NULL,
    start_ticks INTEGER NOT NULL,
    started_at REAL NOT NULL,
    accel TEXT NOT NULL,
    ssh_port INTEGER
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    vm TEXT,
    type TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS networks (
    name TEXT PRIMARY KEY,
    subnet TEXT NOT NULL,
    created_at REAL NOT NULL,
    bridge TEXT
);
CREATE TABLE IF NOT EXISTS attachments (
    network TEXT NOT NULL REFERENCES networks(name),
    vm TEXT NOT NULL REFERENCES vms(name) ON DELETE CASCADE,
    mac TEXT NOT NULL UNIQUE,
    address TEXT NOT NULL,
    PRIMARY KEY (network, vm),
    UNIQUE (network, address)
);
CREATE TABLE IF NOT EXISTS quotas (
    scope TEXT NOT NULL CHECK (scope IN ('project', 'owner')),
    name TEXT NOT NULL,
    vms INTEGER,
    vcpus INTEGER,
    memory INTEGER,
    disk INTEGER,
    PRIMARY KEY (scope, name)
);
CREATE TABLE IF NOT EXISTS disks (
    vm TEXT NOT NULL REFERENCES vms(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    file TEXT NOT NULL,
    format TEXT NOT NULL DEFAULT 'qcow2',
    size INTEGER NOT NULL,
    limits TEXT NOT NULL DEFAULT '{}',
    serial TEXT NOT NULL,
    port INTEGER,
    created_at REAL NOT NULL,
    PRIMARY KEY (vm, name)
);
CREATE TABLE IF NOT EXISTS projects (
    name TEXT PRIMARY KEY,
    default_ttl REAL,
    on_expiry TEXT NOT NULL DEFAULT 'stop'
);
CREATE TABLE IF NOT EXISTS layers (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    backing TEXT REFERENCES layers(id),
    image TEXT,
    vm TEXT,
    purpose TEXT NOT NULL CHECK (purpose IN ('top', 'frozen')),
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    vm TEXT NOT NULL,
    name TEXT NOT NULL,
    parent TEXT,
    layer TEXT NOT NULL REFERENCES layers(id),
    state_file TEXT,
    note TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    UNIQUE (vm, name)
);
CREATE TABLE IF NOT EXISTS snapshot_current (
    vm TEXT PRIMARY KEY,
    snapshot TEXT
);
CREATE TABLE IF NOT EXISTS templates (
    name TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    image TEXT NOT NULL,
    vcpus INTEGER NOT NULL,
    memory INTEGER NOT NULL,
    disk INTEGER NOT NULL,
    created_at REAL NOT NULL,
    size INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS operations (
    id TEXT PRIMARY KEY,
    vm TEXT,
    kind TEXT NOT NULL,
    started_at REAL NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS template_vms (
    vm TEXT PRIMARY KEY REFERENCES vms(name) ON DELETE CASCADE,
    template TEXT NOT NULL REFERENCES templates(name),
    fresh INTEGER NOT NULL DEFAULT 1
);
"""


@dataclass
class VMRecord:
    spec: VMSpec
    id: str
    state: VMState
    state_reason: str
    mac: str
    created_at: float
    last_exit_reason: str
    restart_count: int

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class RuntimeRecord:
    name: str
    pid: int
    start_ticks: int
    started_at: float
    accel: str
    ssh_port: int | None = None
    provisioned_boot: str | None = None


@dataclass(frozen=True)
class NetworkRecord:
    name: str
    subnet: str
    created_at: float
    bridge: str | None = None


@dataclass(frozen=True)
class AttachmentRecord:
    network: str
    vm: str
    mac: str
    address: str


@dataclass(frozen=True)
class DiskRecord:
    """An extra disk. ``limits``: QEMU throttle-group fields that are set (absent = unlimited); ``port``: the
    hot-plug port it sits in while attached, None while detached."""

    vm: str
    name: str
    file: str
    size: int
    serial: str
    created_at: float
    format: str = "qcow2"
    limits: dict[str, int] = field(default_factory=dict)
    port: int | None = None

    @property
    def attached(self) -> bool:
        return self.port is not None


@dataclass(frozen=True)
class TemplateRecord:
    name: str
    source: str
    image: str
    vcpus: int
    memory: int  # MiB
    disk: int  # bytes, the virtual size of its disk
    created_at: float
    size: int = 0  # bytes on the host: disk, memory and state files
    #: Captured with a shell listening on Corral's guest channel (corral.engine.guest_channel): a VM made from it
    #: takes its identity through the channel, else through the guest agent.
    channel: bool = False


@dataclass(frozen=True)
class ProjectRecord:
    name: str
    default_ttl: float | None = None
    on_expiry: str = "stop"
    idle: IdlePolicy | None = None


@dataclass(frozen=True)
class LayerRecord:
    """One qcow2 layer file. ``backing`` None: its backing is the disk of ``image``, or none (``image`` None)."""

    id: str
    path: str
    backing: str | None
    image: str | None
    vm: str | None
    purpose: str  # "top" or "frozen"
    created_at: float


@dataclass(frozen=True)
class SnapshotRecord:
    id: str
    vm: str
    name: str
    parent: str | None
    layer: str
    state_file: str | None
    note: str
    created_at: float


@dataclass
class OperationRecord:
    id: str
    vm: str | None
    kind: str
    started_at: float
    data: dict[str, Any] = field(default_factory=dict)


#: Every (table, column) holding a VM's name, besides vms.name: what :meth:`Store.rename_vm` moves. Tables of other
#: modules (backup schedules, pool members) are listed too and skipped where they do not exist.
VM_NAME_COLUMNS = (("runtime", "name"), ("events", "vm"), ("attachments", "vm"), ("disks", "vm"), ("layers", "vm"),
                   ("snapshots", "vm"), ("snapshot_current", "vm"), ("template_vms", "vm"), ("operations", "vm"),
                   ("backup_schedules", "vm"), ("pool_members", "vm"))

#: Columns added to tables after their first release (ALTER TABLE on open), table -> column -> declaration.
ADDED_COLUMNS = {
    "events": {"actor": "TEXT NOT NULL DEFAULT ''", "owner": "TEXT NOT NULL DEFAULT ''",
               "result": "TEXT NOT NULL DEFAULT 'ok'"},
    # The guest's boot_id once Corral provisioned that boot: a re-attach to the same boot need not do it again.
    "runtime": {"provisioned_boot": "TEXT"},
    # Idle control: the project's default policy; each VM's last activity (wall time) as the daemon measured it.
    "projects": {"idle": "TEXT"},
    "vms": {"last_active": "REAL"},
    "templates": {"channel": "INTEGER NOT NULL DEFAULT 0"},
}
EVENT_INDEXES = """
CREATE INDEX IF NOT EXISTS events_vm ON events(vm, id);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
"""


@dataclass(frozen=True)
class EventRecord:
    id: int
    ts: float
    vm: str | None
    type: str
    message: str
    data: dict[str, Any]
    actor: str = ""
    owner: str = ""
    result: str = "ok"


@dataclass(frozen=True)
class EventQuery:
    """Which events: every given field must match (AND). ``since`` is a Unix time."""

    vm: str | None = None
    owner: str | None = None
    actor: str | None = None
    type: str | None = None
    result: str | None = None
    since: float | None = None
    after: int = 0

    def matches(self, e: EventRecord) -> bool:
        """The same test as :meth:`Store.events` makes in SQL, for events as they happen."""
        return (e.id > self.after and (self.vm is None or e.vm == self.vm)
                and (self.owner is None or e.owner == self.owner) and (self.actor is None or e.actor == self.actor)
                and (self.type is None or e.type == self.type) and (self.result is None or e.result == self.result)
                and (self.since is None or e.ts >= self.since))


class Store:
    """Open (and create) the database at ``path``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        for table, columns in ADDED_COLUMNS.items():
            have = {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}
            for col, decl in columns.items():
                if col not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {col} {decl}")
        self._db.executescript(EVENT_INDEXES)

    def close(self) -> None:
        self._db.close()

    def version(self) -> tuple[int, int]:
        """Changes when anything in the database changes: rows written through this connection, and commits of
        other connections (SQLite's data_version). For caches of what was read."""
        return self._db.total_changes, self._db.execute("PRAGMA data_version").fetchone()[0]

    # --- VMs -------------------------------------------------------------------------------------------------
    def insert_vm(self, rec: VMRecord) -> None:
        self._db.execute(
            "INSERT INTO vms (name, id, spec, state, state_reason, mac, created_at) VALUES (?,?,?,?,?,?,?)",
            (rec.name, rec.id, rec.spec.model_dump_json(), rec.state.value, rec.state_reason, rec.mac,
             rec.created_at),
        )

    def delete_vm(self, name: str) -> None:
        self._db.execute("DELETE FROM vms WHERE name = ?", (name,))

    def get_vm(self, name: str) -> VMRecord | None:
        row = self._db.execute("SELECT * FROM vms WHERE name = ?", (name,)).fetchone()
        return _vm(row) if row else None

    def list_vms(self) -> list[VMRecord]:
        return [_vm(r) for r in self._db.execute("SELECT * FROM vms ORDER BY name")]

    def update_spec(self, spec: VMSpec) -> None:
        self._db.execute("UPDATE vms SET spec = ? WHERE name = ?", (spec.model_dump_json(), spec.name))

    def set_state(self, name: str, state: VMState, reason: str = "") -> None:
        self._db.execute("UPDATE vms SET state = ?, state_reason = ? WHERE name = ?", (state.value, reason, name))

    def set_exit_reason(self, name: str, reason: str) -> None:
        self._db.execute("UPDATE vms SET last_exit_reason = ? WHERE name = ?", (reason, name))

    def set_restart_count(self, name: str, count: int) -> None:
        self._db.execute("UPDATE vms SET restart_count = ? WHERE name = ?", (count, name))

    # --- runtime ---------------------------------------------------------------------------------------------
    def put_runtime(self, rt: RuntimeRecord) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO runtime (name, pid, start_ticks, started_at, accel, ssh_port) VALUES (?,?,?,?,?,?)",
            (rt.name, rt.pid, rt.start_ticks, rt.started_at, rt.accel, rt.ssh_port),
        )

    def set_provisioned_boot(self, name: str, boot_id: str) -> None:
        self._db.execute("UPDATE runtime SET provisioned_boot = ? WHERE name = ?", (boot_id, name))

    def list_runtimes(self) -> dict[str, RuntimeRecord]:
        """Every runtime record by VM name, in one query (for listing many VMs)."""
        return {r["name"]: RuntimeRecord(**dict(r)) for r in self._db.execute("SELECT * FROM runtime")}

    def get_runtime(self, name: str) -> RuntimeRecord | None:
        row = self._db.execute("SELECT * FROM runtime WHERE name = ?", (name,)).fetchone()
        return RuntimeRecord(**dict(row)) if row else None

    def delete_runtime(self, name: str) -> None:
        self._db.execute("DELETE FROM runtime WHERE name = ?", (name,))

    # --- events ----------------------------------------------------------------------------------------------
    def add_event(self, vm: str | None, type_: str, message: str, data: dict[str, Any] | None = None, *,
                  actor: str = "", owner: str = "", result: str = "ok") -> EventRecord:
        ts = time.time()
        data = data or {}
        cur = self._db.execute(
            "INSERT INTO events (ts, vm, type, message, data, actor, owner, result) VALUES (?,?,?,?,?,?,?,?)",
            (ts, vm, type_, message, json.dumps(data, default=str), actor, owner, result),
        )
        return EventRecord(int(cur.lastrowid or 0), ts, vm, type_, message, data, actor, owner, result)

    def events(self, vm: str | None = None, after: int = 0, limit: int = 1000, *,
               query: EventQuery | None = None, newest: bool = False) -> list[EventRecord]:
        """Events in order, filtered by ``query`` (or just ``vm`` and ``after``); with ``newest``, the last
        ``limit`` of them instead of the first."""
        qy = query or EventQuery(vm=vm, after=after)
        q = "SELECT * FROM events WHERE id > ?"
        args: list[Any] = [qy.after]
        for col in ("vm", "owner", "actor", "type", "result"):
            if (value := getattr(qy, col)) is not None:
                q += f" AND {col} = ?"
                args.append(value)
        if qy.since is not None:
            q += " AND ts >= ?"
            args.append(qy.since)
        q += f" ORDER BY id {'DESC' if newest else ''} LIMIT ?"
        args.append(limit)
        rows = [_event(r) for r in self._db.execute(q, args)]
        return rows[::-1] if newest else rows

    def last_activity(self) -> dict[str, float]:
        """The time of each VM's newest event."""
        return {r[0]: r[1] for r in self._db.execute(
            "SELECT vm, MAX(ts) FROM events WHERE vm IS NOT NULL GROUP BY vm")}

    # --- networks -------------------------------------------------------------------------------------------
    def insert_network(self, rec: NetworkRecord) -> None:
        self._db.execute("INSERT INTO networks (name, subnet, created_at, bridge) VALUES (?,?,?,?)",
                         (rec.name, rec.subnet, rec.created_at, rec.bridge))

    def get_network(self, name: str) -> NetworkRecord | None:
        row = self._db.execute("SELECT * FROM networks WHERE name = ?", (name,)).fetchone()
        return NetworkRecord(**dict(row)) if row else None

    def list_networks(self) -> list[NetworkRecord]:
        return [NetworkRecord(**dict(r)) for r in self._db.execute("SELECT * FROM networks ORDER BY name")]

    def delete_network(self, name: str) -> None:
        self._db.execute("DELETE FROM attachments WHERE network = ?", (name,))
        self._db.execute("DELETE FROM networks WHERE name = ?", (name,))

    def insert_attachment(self, att: AttachmentRecord) -> None:
        self._db.execute("INSERT INTO attachments (network, vm, mac, address) VALUES (?,?,?,?)",
                         (att.network, att.vm, att.mac, att.address))

    def attachments(self, network: str | None = None, vm: str | None = None) -> list[AttachmentRecord]:
        q, args = "SELECT * FROM attachments WHERE 1=1", []
        if network is not None:
            q += " AND network = ?"
            args.append(network)
        if vm is not None:
            q += " AND vm = ?"
            args.append(vm)
        return [AttachmentRecord(**dict(r)) for r in self._db.execute(q + " ORDER BY network, vm", args)]

    # --- quotas ----------------------------------------------------------------------------------------------
    def put_quota(self, q: Quota) -> None:
        self._db.execute("INSERT OR REPLACE INTO quotas (scope, name, vms, vcpus, memory, disk) VALUES (?,?,?,?,?,?)",
                         (q.scope, q.name, q.vms, q.vcpus, q.memory, q.disk))

    def get_quota(self, scope: str, name: str) -> Quota | None:
        row = self._db.execute("SELECT * FROM quotas WHERE scope = ? AND name = ?", (scope, name)).fetchone()
        return Quota(**dict(row)) if row else None

    def list_quotas(self) -> list[Quota]:
        return [Quota(**dict(r)) for r in self._db.execute("SELECT * FROM quotas ORDER BY scope DESC, name")]

    def delete_quota(self, scope: str, name: str) -> bool:
        return self._db.execute("DELETE FROM quotas WHERE scope = ? AND name = ?", (scope, name)).rowcount > 0


    # --- extra disks ------------------------------------------------------------------------------------------
    def insert_disk(self, d: DiskRecord) -> None:
        self._db.execute(
            "INSERT INTO disks (vm, name, file, format, size, limits, serial, port, created_at) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            (d.vm, d.name, d.file, d.format, d.size, json.dumps(d.limits), d.serial, d.port, d.created_at))

    def update_disk(self, d: DiskRecord) -> None:
        """Store the size, limits and port of an existing disk."""
        self._db.execute("UPDATE disks SET size = ?, limits = ?, port = ? WHERE vm = ? AND name = ?",
                         (d.size, json.dumps(d.limits), d.port, d.vm, d.name))

    def get_disk(self, vm: str, name: str) -> DiskRecord | None:
        row = self._db.execute("SELECT * FROM disks WHERE vm = ? AND name = ?", (vm, name)).fetchone()
        return _disk(row) if row else None

    def list_disks(self, vm: str | None = None) -> list[DiskRecord]:
        if vm is None:
            return [_disk(r) for r in self._db.execute("SELECT * FROM disks ORDER BY vm, name")]
        return [_disk(r) for r in self._db.execute("SELECT * FROM disks WHERE vm = ? ORDER BY name", (vm,))]

    def delete_disk(self, vm: str, name: str) -> None:
        self._db.execute("DELETE FROM disks WHERE vm = ? AND name = ?", (vm, name))

    # --- projects -------------------------------------------------------------------------------------------
    def put_project(self, rec: ProjectRecord) -> None:
        """Set a project's default TTL and expiry action (its idle policy is left as it is)."""
        self._db.execute("INSERT INTO projects (name, default_ttl, on_expiry) VALUES (?,?,?) ON CONFLICT(name) DO "
                         "UPDATE SET default_ttl = excluded.default_ttl, on_expiry = excluded.on_expiry",
                         (rec.name, rec.default_ttl, rec.on_expiry))

    def set_project_idle(self, name: str, policy: IdlePolicy | None) -> None:
        """Set (None: remove) a project's default idle policy; its TTL settings are left as they are."""
        value = policy.model_dump_json() if policy is not None else None
        self._db.execute("INSERT INTO projects (name, idle) VALUES (?,?) ON CONFLICT(name) DO UPDATE SET "
                         "idle = excluded.idle", (name, value))

    def get_project(self, name: str) -> ProjectRecord | None:
        row = self._db.execute("SELECT * FROM projects WHERE name = ?", (name,)).fetchone()
        return _project(row) if row else None

    def list_projects(self) -> list[ProjectRecord]:
        return [_project(r) for r in self._db.execute("SELECT * FROM projects ORDER BY name")]

    # --- activity -------------------------------------------------------------------------------------------
    def set_last_active(self, name: str, ts: float) -> None:
        self._db.execute("UPDATE vms SET last_active = ? WHERE name = ?", (ts, name))

    def last_active(self) -> dict[str, float]:
        """Each VM's last activity as the daemon measured it (VMs never measured are absent)."""
        return {r[0]: r[1] for r in self._db.execute("SELECT name, last_active FROM vms WHERE last_active IS NOT NULL")}


    # --- layers and snapshots (corral.storage) ----------------------------------------------------------------
    def insert_layer(self, rec: LayerRecord) -> None:
        self._db.execute("INSERT INTO layers (id, path, backing, image, vm, purpose, created_at) "
                         "VALUES (?,?,?,?,?,?,?)",
                         (rec.id, rec.path, rec.backing, rec.image, rec.vm, rec.purpose, rec.created_at))

    def get_layer(self, id_: str) -> LayerRecord | None:
        row = self._db.execute("SELECT * FROM layers WHERE id = ?", (id_,)).fetchone()
        return LayerRecord(**dict(row)) if row else None

    def list_layers(self, vm: str | None = None) -> list[LayerRecord]:
        q, args = "SELECT * FROM layers", tuple[str, ...]()
        if vm is not None:
            q, args = q + " WHERE vm = ?", (vm,)
        return [LayerRecord(**dict(r)) for r in self._db.execute(q + " ORDER BY created_at", args)]

    def layer_children(self, id_: str) -> list[LayerRecord]:
        return [LayerRecord(**dict(r)) for r in self._db.execute(
            "SELECT * FROM layers WHERE backing = ? ORDER BY created_at", (id_,))]

    def top_layer(self, vm: str) -> LayerRecord | None:
        row = self._db.execute("SELECT * FROM layers WHERE vm = ? AND purpose = 'top'", (vm,)).fetchone()
        return LayerRecord(**dict(row)) if row else None

    def update_layer(self, id_: str, **fields: Any) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._db.execute(f"UPDATE layers SET {cols} WHERE id = ?", (*fields.values(), id_))

    def delete_layer(self, id_: str) -> None:
        self._db.execute("DELETE FROM layers WHERE id = ?", (id_,))

    def insert_snapshot(self, rec: SnapshotRecord) -> None:
        self._db.execute(
            "INSERT INTO snapshots (id, vm, name, parent, layer, state_file, note, created_at) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (rec.id, rec.vm, rec.name, rec.parent, rec.layer, rec.state_file, rec.note, rec.created_at))

    def list_snapshots(self, vm: str | None = None) -> list[SnapshotRecord]:
        q, args = "SELECT * FROM snapshots", tuple[str, ...]()
        if vm is not None:
            q, args = q + " WHERE vm = ?", (vm,)
        return [SnapshotRecord(**dict(r)) for r in self._db.execute(q + " ORDER BY created_at", args)]

    def snapshots_of_layer(self, layer: str) -> list[SnapshotRecord]:
        return [SnapshotRecord(**dict(r)) for r in self._db.execute("SELECT * FROM snapshots WHERE layer = ?",
                                                                    (layer,))]

    def reparent_snapshots(self, vm: str, old: str, new: str | None) -> None:
        self._db.execute("UPDATE snapshots SET parent = ? WHERE vm = ? AND parent = ?", (new, vm, old))

    def delete_snapshot(self, id_: str) -> None:
        self._db.execute("DELETE FROM snapshots WHERE id = ?", (id_,))

    def current_snapshot(self, vm: str) -> str | None:
        row = self._db.execute("SELECT snapshot FROM snapshot_current WHERE vm = ?", (vm,)).fetchone()
        return row[0] if row else None

    def set_current_snapshot(self, vm: str, snapshot: str | None) -> None:
        self._db.execute("INSERT OR REPLACE INTO snapshot_current (vm, snapshot) VALUES (?,?)", (vm, snapshot))

    def forget_vm_storage(self, vm: str) -> None:
        """The VM's snapshot rows and current marker (its layers are released by corral.storage first)."""
        self._db.execute("DELETE FROM snapshots WHERE vm = ?", (vm,))
        self._db.execute("DELETE FROM snapshot_current WHERE vm = ?", (vm,))


    # --- templates ------------------------------------------------------------------------------------------
    def insert_template(self, rec: TemplateRecord) -> None:
        self._db.execute("INSERT INTO templates (name, source, image, vcpus, memory, disk, created_at, size, channel) "
                         "VALUES (?,?,?,?,?,?,?,?,?)", (rec.name, rec.source, rec.image, rec.vcpus, rec.memory,
                                                        rec.disk, rec.created_at, rec.size, int(rec.channel)))

    def get_template(self, name: str) -> TemplateRecord | None:
        row = self._db.execute("SELECT * FROM templates WHERE name = ?", (name,)).fetchone()
        return _template(row) if row else None

    def list_templates(self) -> list[TemplateRecord]:
        return [_template(r) for r in self._db.execute("SELECT * FROM templates ORDER BY name")]

    def delete_template(self, name: str) -> None:
        self._db.execute("DELETE FROM templates WHERE name = ?", (name,))

    def link_template_vm(self, vm: str, template: str) -> None:
        self._db.execute("INSERT INTO template_vms (vm, template, fresh) VALUES (?,?,1)", (vm, template))

    def template_of(self, vm: str) -> tuple[str, bool] | None:
        """(template, fresh) of a VM made from a template; None for any other VM."""
        row = self._db.execute("SELECT template, fresh FROM template_vms WHERE vm = ?", (vm,)).fetchone()
        return (row["template"], bool(row["fresh"])) if row else None

    def set_template_vm_started(self, vm: str) -> None:
        self._db.execute("UPDATE template_vms SET fresh = 0 WHERE vm = ?", (vm,))

    def template_users(self, template: str) -> list[str]:
        return [r["vm"] for r in self._db.execute(
            "SELECT vm FROM template_vms WHERE template = ? ORDER BY vm", (template,))]

    # --- the operations journal (corral.operations) ------------------------------------------------------------
    def put_operation(self, rec: OperationRecord) -> None:
        self._db.execute("INSERT OR REPLACE INTO operations (id, vm, kind, started_at, data) VALUES (?,?,?,?,?)",
                         (rec.id, rec.vm, rec.kind, rec.started_at, json.dumps(rec.data)))

    def delete_operation(self, id_: str) -> None:
        self._db.execute("DELETE FROM operations WHERE id = ?", (id_,))

    def list_operations(self) -> list[OperationRecord]:
        return [OperationRecord(r["id"], r["vm"], r["kind"], r["started_at"], json.loads(r["data"]))
                for r in self._db.execute("SELECT * FROM operations ORDER BY started_at")]

    # --- renaming ---------------------------------------------------------------------------------------------
    def rename_vm(self, old: str, new: str, spec: VMSpec) -> None:
        """VM ``old`` becomes ``new`` (``spec.name``) with ``spec``, in every table keyed by a VM's name, in one
        transaction: all rows move, or none."""
        assert spec.name == new
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("PRAGMA defer_foreign_keys = ON")  # children follow the parent within the transaction
            self._db.execute("UPDATE vms SET name = ?, spec = ? WHERE name = ?", (new, spec.model_dump_json(), old))
            for table, column in VM_NAME_COLUMNS:
                if table in tables:
                    self._db.execute(f"UPDATE {table} SET {column} = ? WHERE {column} = ?", (new, old))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise



def _project(r: sqlite3.Row) -> ProjectRecord:
    return ProjectRecord(name=r["name"], default_ttl=r["default_ttl"], on_expiry=r["on_expiry"],
                         idle=IdlePolicy.model_validate_json(r["idle"]) if r["idle"] else None)


def _event(r: sqlite3.Row) -> EventRecord:
    return EventRecord(r["id"], r["ts"], r["vm"], r["type"], r["message"], json.loads(r["data"]), r["actor"],
                       r["owner"], r["result"])


def _template(r: sqlite3.Row) -> TemplateRecord:
    return TemplateRecord(**{**dict(r), "channel": bool(r["channel"])})


def _disk(r: sqlite3.Row) -> DiskRecord:
    return DiskRecord(vm=r["vm"], name=r["name"], file=r["file"], size=r["size"], serial=r["serial"],
                      created_at=r["created_at"], format=r["format"], limits=json.loads(r["limits"]), port=r["port"])
@functools.lru_cache(maxsize=8192)
def _parse_spec(text: str) -> VMSpec:
    return VMSpec.model_validate_json(text)


def _vm(row: sqlite3.Row) -> VMRecord:
    # A spec's JSON is parsed (and validated) once, not at every listing: `ls` of 1,000 VMs stays fast. Records
    # with the same spec text share one VMSpec object: nothing changes a spec in place (every change is
    # model_copy(update=...) then Store.update_spec).
    return VMRecord(
        spec=_parse_spec(row["spec"]),
        id=row["id"],
        state=VMState(row["state"]),
        state_reason=row["state_reason"],
        mac=row["mac"],
        created_at=row["created_at"],
        last_exit_reason=row["last_exit_reason"],
        restart_count=row["restart_count"],
    )
