"""The pure parts of corral.storage: chain node names, qcow2 header facts, the layers and snapshots tables, the
snapshot tree as `corral snapshot ls` draws it, snapshot names."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from corral.api.models import SnapshotInfo
from corral.cli.snapshot import tree_lines
from corral.errors import InvalidInput
from corral.storage import qcow2
from corral.storage.chain import Chain, ChainLayer
from corral.storage.service import check_name
from corral.store.db import LayerRecord, SnapshotRecord, Store


def test_chain_node_names() -> None:
    layers = tuple(ChainLayer(Path(f"/l/{i}.qcow2")) for i in range(4))
    assert Chain(layers).node_names() == ["base", "layer1", "layer2", "root"]
    assert Chain(layers[:2]).node_names() == ["base", "root"]
    assert Chain(layers[:1]).node_names() == ["root"]
    with pytest.raises(ValueError):
        Chain(())


def test_qcow2_header_facts(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    top = tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "100G"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top)], check=True)
    assert qcow2.virtual_size(base) == qcow2.virtual_size(top) == 100 << 30
    assert qcow2.is_empty(top)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 1 1G 64k", str(top)], check=True, capture_output=True)
    assert not qcow2.is_empty(top) and qcow2.is_empty(base)
    raw = tmp_path / "x.raw"
    raw.write_bytes(b"\0" * 4096)
    with pytest.raises(qcow2.NotQcow2):
        qcow2.virtual_size(raw)


def test_layers_and_snapshots_tables(tmp_path: Path) -> None:
    store = Store(tmp_path / "corral.db")
    try:
        store.insert_layer(LayerRecord("a", "/l/a.qcow2", None, "tiny", "vm", "frozen", 1.0))
        store.insert_layer(LayerRecord("b", "/l/b.qcow2", "a", None, "vm", "top", 2.0))
        store.insert_layer(LayerRecord("c", "/l/c.qcow2", "a", None, "clone", "top", 3.0))
        assert [x.id for x in store.layer_children("a")] == ["b", "c"]
        assert store.top_layer("vm") == LayerRecord("b", "/l/b.qcow2", "a", None, "vm", "top", 2.0)
        store.insert_snapshot(SnapshotRecord("s1", "vm", "one", None, "a", None, "", 1.5))
        store.insert_snapshot(SnapshotRecord("s2", "vm", "two", "s1", "a", "/l/s2.state", "", 1.6))
        store.set_current_snapshot("vm", "s2")
        assert store.current_snapshot("vm") == "s2"
        store.reparent_snapshots("vm", "s1", None)
        assert [s.parent for s in store.list_snapshots("vm")] == [None, None]
        assert len(store.snapshots_of_layer("a")) == 2
        with pytest.raises(sqlite3.IntegrityError):  # a layer still named by a snapshot or backing another cannot go
            store.delete_layer("a")
        store.update_layer("a", vm=None)
        assert store.get_layer("a").vm is None  # type: ignore[union-attr]
        store.forget_vm_storage("vm")
        assert store.list_snapshots("vm") == [] and store.current_snapshot("vm") is None
    finally:
        store.close()


def _snap(name: str, parent: str | None, t: float, current: bool = False, memory: bool = False) -> SnapshotInfo:
    return SnapshotInfo(name=name, vm="v", parent=parent, created_at=t, memory=memory, current=current, size=1 << 20,
                        note="")


def test_tree_lines_draw_branches_and_now() -> None:
    snaps = [_snap("a", None, 1), _snap("b", "a", 2, memory=True), _snap("c", "a", 3, current=True),
             _snap("d", "b", 4)]
    lines = [ln.split("  [")[0] for ln in tree_lines(snaps)]
    assert lines == ["a", "├── b", "│   └── d", "└── c", "    └── (now)"]
    assert "memory+disk" in tree_lines(snaps)[1]
    # No current snapshot (the last one was deleted, say): the present state is a root of its own.
    assert [ln.split("  [")[0] for ln in tree_lines([_snap("a", None, 1)])] == ["a", "(now)"]


@pytest.mark.parametrize("name", ["before-upgrade", "v1.2", "a", "A_9"])
def test_good_snapshot_names(name: str) -> None:
    check_name(name)


@pytest.mark.parametrize("name", ["", "-x", "a b", "a/b", "x" * 64, "é"])
def test_bad_snapshot_names(name: str) -> None:
    with pytest.raises(InvalidInput):
        check_name(name)
