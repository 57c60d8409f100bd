"""The SQLite store. One connection, used from the daemon's event loop; every call is a short local transaction.

The tables are described, and created, in :mod:`corral.store.schema`; the records read and written are in
:mod:`corral.store.records` (re-exported here: ``from corral.store.db import VMRecord`` keeps working).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from corral.idle.policy import IdlePolicy
from corral.store.records import (
    AttachmentRecord,
    DiskRecord,
    EventQuery,
    EventRecord,
    LayerRecord,
    NetworkRecord,
    OperationRecord,
    ProjectRecord,
    RuntimeRecord,
    SnapshotRecord,
    TemplateRecord,
    VMRecord,
    _disk,
    _event,
    _project,
    _template,
    _vm,
)
from corral.store.schema import ADDED_COLUMNS, EVENT_INDEXES, SCHEMA, VM_NAME_COLUMNS
from corral.vm.quota import Quota
from corral.vm.spec import VMSpec
from corral.vm.states import VMState

__all__ = [
    "AttachmentRecord", "DiskRecord", "EventQuery", "EventRecord", "LayerRecord", "NetworkRecord", "OperationRecord",
    "ProjectRecord", "RuntimeRecord", "SnapshotRecord", "TemplateRecord", "VMRecord", "Store",
]


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

    def set_exit_code(self, name: str, code: int | None) -> None:
        """The exit code of the VM's main process (OCI images) in its last run; None when it printed none."""
        self._db.execute("UPDATE vms SET exit_code = ? WHERE name = ?", (code, name))

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

    def swap_layer(self, old: str, new: LayerRecord) -> None:
        """Layer ``old`` goes and ``new`` comes, in one transaction: a VM is never left with no top, or two."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self.delete_layer(old)
            self.insert_layer(new)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

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
