"""Removing a deleted VM's folder: a late writer cannot bring it back, and what a crash leaves aside is swept."""

from __future__ import annotations

import threading
from pathlib import Path

from corral import fileio


def test_remove_dir_moves_it_aside_so_a_late_write_under_the_old_path_fails(tmp_path: Path) -> None:
    vm = tmp_path / "vms" / "web"
    vm.mkdir(parents=True)
    (vm / "disk.qcow2").write_bytes(b"x" * 4096)
    fileio.remove_dir(vm)
    assert not vm.exists()
    assert list(vm.parent.iterdir()) == []
    try:
        (vm / "ssh_key").write_text("late")  # what a cancelled ssh-keygen thread would do after the delete
    except FileNotFoundError:
        pass
    assert not vm.exists(), "a write after the removal does not bring the folder back"


def test_remove_dir_of_a_missing_folder_is_a_no_op(tmp_path: Path) -> None:
    fileio.remove_dir(tmp_path / "nothing")


def test_remove_dir_while_a_writer_keeps_making_files(tmp_path: Path) -> None:
    vm = tmp_path / "web"
    vm.mkdir()
    for i in range(200):
        (vm / f"f{i}").write_text("x")
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            try:
                (vm / f"late{i}").write_text("x")
            except FileNotFoundError:
                return
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        fileio.remove_dir(vm)
    finally:
        stop.set()
        t.join()
    assert not vm.exists()
    fileio.sweep_removed(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_sweep_removes_only_what_was_set_aside(tmp_path: Path) -> None:
    aside = tmp_path / f"{fileio.REMOVED_PREFIX}web-0123abcd"
    (aside / "sub").mkdir(parents=True)
    (aside / "sub" / "disk.qcow2").write_text("x")
    (tmp_path / "web").mkdir()
    (tmp_path / f"{fileio.REMOVED_PREFIX}not-a-dir").write_text("x")
    assert fileio.sweep_removed(tmp_path) == [aside]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{fileio.REMOVED_PREFIX}not-a-dir", "web"]
    assert fileio.sweep_removed(tmp_path / "missing") == []
