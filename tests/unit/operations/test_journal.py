"""The operations journal: a row for as long as an operation runs, written at once; nested steps share it."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.operations import journal
from corral.operations.journal import Journal
from corral.store.db import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "corral.db")


def test_a_row_while_it_runs_none_after(store: Store) -> None:
    j = Journal(store)
    with j.run("snapshot", "web", snapshot="s1", state_file=None) as op:
        [row] = store.list_operations()
        assert (row.kind, row.vm, row.data) == ("snapshot", "web", {"snapshot": "s1"})
        op.add("files", "/x/a.qcow2")
        op.add("files", "/x/a.qcow2")  # once
        op.note(paused=True)
        assert store.list_operations()[0].data == {"snapshot": "s1", "files": ["/x/a.qcow2"], "paused": True}
        op.note(paused=None)
        op.discard("files", "/x/a.qcow2")
        assert store.list_operations()[0].data == {"snapshot": "s1"}
    assert store.list_operations() == []


def test_a_failed_operation_leaves_no_row(store: Store) -> None:
    with pytest.raises(RuntimeError), Journal(store).run("clone", "web"):
        raise RuntimeError("boom")
    assert store.list_operations() == []


def test_nested_steps_note_into_the_outer_operation(store: Store) -> None:
    j = Journal(store)
    with j.run("clone", "web", clone="c") as outer:
        journal.current().note(overlay={"vm": "web"})  # a helper such as freezing the disk
        with j.run("snapshot", "web") as inner:
            assert inner is outer
        [row] = store.list_operations()
        assert row.kind == "clone" and row.data["overlay"] == {"vm": "web"}
    assert store.list_operations() == []


def test_outside_an_operation_notes_go_nowhere(store: Store) -> None:
    journal.current().note(frozen=True)
    assert store.list_operations() == []


def test_notes_after_the_end_do_not_bring_the_row_back(store: Store) -> None:
    with Journal(store).run("backup", "web") as op:
        pass
    op.note(frozen=None)  # e.g. a background thaw the operation started, finishing later
    assert store.list_operations() == []


def test_a_vm_renamed_takes_its_operations_along(store: Store) -> None:
    """The journal is keyed by VM name like every other table: a pool member's rename moves its rows."""
    from corral.store.db import VM_NAME_COLUMNS

    assert ("operations", "vm") in VM_NAME_COLUMNS
