"""The SQLite schema of the store (corral.store.db): its tables, and the columns added since their first
release.


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
    # The exit code of an OCI image's main process in its VM's last run (corral.images.oci); NULL: none seen.
    "vms": {"last_active": "REAL", "exit_code": "INTEGER"},
    "templates": {"channel": "INTEGER NOT NULL DEFAULT 0"},
}
EVENT_INDEXES = """
CREATE INDEX IF NOT EXISTS events_vm ON events(vm, id);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
"""
