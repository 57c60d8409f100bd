import sqlite3
from pathlib import Path

import pytest

from corral.store.db import RuntimeRecord, Store


def test_older_database_gains_new_columns(tmp_path: Path) -> None:
    db = tmp_path / "corral.db"
    old = sqlite3.connect(db)
    old.executescript(
        "CREATE TABLE vms (name TEXT PRIMARY KEY, id TEXT NOT NULL UNIQUE, spec TEXT NOT NULL, state TEXT NOT NULL,"
        " state_reason TEXT NOT NULL DEFAULT '', mac TEXT NOT NULL, created_at REAL NOT NULL,"
        " last_exit_reason TEXT NOT NULL DEFAULT '', restart_count INTEGER NOT NULL DEFAULT 0);"
        "CREATE TABLE runtime (name TEXT PRIMARY KEY, pid INTEGER NOT NULL, start_ticks INTEGER NOT NULL,"
        " started_at REAL NOT NULL, accel TEXT NOT NULL, ssh_port INTEGER);"
        "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, vm TEXT, type TEXT NOT NULL,"
        " message TEXT NOT NULL, data TEXT NOT NULL DEFAULT '{}');"
    )
    old.close()
    store = Store(db)
    try:
        store._db.execute("INSERT INTO vms (name, id, spec, state, mac, created_at) VALUES "
                          "('a', 'id-a', '{\"name\": \"a\"}', 'running', '52:54:00:00:00:01', 0)")
        store.put_runtime(RuntimeRecord("a", 123, 456, 0.0, "tcg", 2222))
        assert store.get_runtime("a") == RuntimeRecord("a", 123, 456, 0.0, "tcg", 2222, None)
        store.set_provisioned_boot("a", "boot-1")
        rt = store.get_runtime("a")
        assert rt is not None and rt.provisioned_boot == "boot-1"
        # A new QEMU process (a start) is a new runtime record: nothing provisioned yet.
        store.put_runtime(RuntimeRecord("a", 124, 457, 1.0, "tcg", 2223))
        rt = store.get_runtime("a")
        assert rt is not None and rt.provisioned_boot is None
        store.add_event("a", "test", "hello")
        assert store.events(vm="a")[-1].message == "hello"
    finally:
        store.close()


def test_quotas_set_list_remove(tmp_path: Path) -> None:
    from corral.vm.quota import Quota

    store = Store(tmp_path / "corral.db")
    store.put_quota(Quota("project", "web", vms=10, vcpus=16, memory=32768, disk=500 << 30))
    store.put_quota(Quota("owner", "ann", vms=3))
    assert store.get_quota("project", "web") == Quota("project", "web", 10, 16, 32768, 500 << 30)
    assert [(q.scope, q.name) for q in store.list_quotas()] == [("project", "web"), ("owner", "ann")]
    store.put_quota(Quota("owner", "ann", vcpus=4))  # replaced as a whole
    assert store.get_quota("owner", "ann") == Quota("owner", "ann", vcpus=4)
    assert store.delete_quota("owner", "ann") and not store.delete_quota("owner", "ann")
    assert store.get_quota("owner", "ann") is None
    with pytest.raises(sqlite3.IntegrityError):
        store.put_quota(Quota("team", "x"))  # type: ignore[arg-type]
    store.close()


def test_projects_round_trip(tmp_path: Path) -> None:
    from corral.store.db import ProjectRecord

    s = Store(tmp_path / "p.db")
    assert s.get_project("web") is None and s.list_projects() == []
    s.put_project(ProjectRecord("web", 7 * 86400, "suspend"))
    s.put_project(ProjectRecord("web", 3600, "delete"))  # replaced
    s.put_project(ProjectRecord("api"))
    assert s.get_project("web") == ProjectRecord("web", 3600, "delete")
    assert [p.name for p in s.list_projects()] == ["api", "web"]
    assert s.get_project("api") == ProjectRecord("api", None, "stop")


def test_template_links_go_with_their_vm(tmp_path: Path) -> None:
    import time

    from corral.store.db import TemplateRecord, VMRecord
    from corral.vm.spec import VMSpec
    from corral.vm.states import VMState

    store = Store(tmp_path / "corral.db")
    try:
        store.insert_template(TemplateRecord("t", "src", "tiny", 1, 128, 1 << 30, time.time(), 5))
        assert store.get_template("t") is not None and [t.name for t in store.list_templates()] == ["t"]
        store.insert_vm(VMRecord(VMSpec(name="a"), "id-a", VMState.STOPPED, "", "52:54:00:00:00:01", 0.0, "", 0))
        store.link_template_vm("a", "t")
        assert store.template_of("a") == ("t", True) and store.template_of("b") is None
        store.set_template_vm_started("a")
        assert store.template_of("a") == ("t", False)
        assert store.template_users("t") == ["a"]
        with pytest.raises(sqlite3.IntegrityError):
            store.link_template_vm("a", "nope")
        store.delete_vm("a")
        assert store.template_users("t") == []
        store.delete_template("t")
        assert store.get_template("t") is None
    finally:
        store.close()


def test_rename_vm_moves_every_row_in_one_transaction(tmp_path: Path) -> None:
    from corral.pools.store import PoolStore
    from corral.store.db import VMRecord
    from corral.vm.spec import VMSpec
    from corral.vm.states import VMState

    store = Store(tmp_path / "corral.db")
    pools = PoolStore(store)
    try:
        store.insert_vm(VMRecord(spec=VMSpec(name="pool-t-abc"), id="id-1", state=VMState.PAUSED, state_reason="",
                                 mac="52:54:00:00:00:01", created_at=0.0, last_exit_reason="", restart_count=0))
        store.put_runtime(RuntimeRecord("pool-t-abc", 123, 456, 0.0, "tcg", 2222))
        store._db.execute("INSERT INTO templates (name, source, image, vcpus, memory, disk, created_at) VALUES "
                          "('t', 's', 'tiny', 1, 128, 1, 0)")
        store.link_template_vm("pool-t-abc", "t")
        store.add_event("pool-t-abc", "pool", "filled")
        pools.add_member("pool-t-abc", "t")

        # Another VM already has the name: nothing moves.
        store.insert_vm(VMRecord(spec=VMSpec(name="taken"), id="id-2", state=VMState.STOPPED, state_reason="",
                                 mac="52:54:00:00:00:02", created_at=0.0, last_exit_reason="", restart_count=0))
        with pytest.raises(sqlite3.IntegrityError):
            store.rename_vm("pool-t-abc", "taken", VMSpec(name="taken"))
        assert store.get_vm("pool-t-abc") is not None and store.get_runtime("pool-t-abc") is not None

        store.rename_vm("pool-t-abc", "web", VMSpec(name="web", labels={"team": "x"}))
        assert store.get_vm("pool-t-abc") is None
        rec = store.get_vm("web")
        assert rec is not None and rec.id == "id-1" and rec.spec.labels == {"team": "x"}
        rt = store.get_runtime("web")
        assert rt is not None and rt.pid == 123
        assert store.template_of("web") == ("t", True)
        assert [e.message for e in store.events(vm="web")] == ["filled"]
        assert pools.member("web") is not None and pools.member("pool-t-abc") is None
    finally:
        store.close()
