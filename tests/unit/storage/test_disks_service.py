"""Extra disks of a stopped VM, without QEMU (real qemu-img): the record, the file, quotas and one-line refusals."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from corral.errors import CapacityError, Conflict, InvalidInput, NotFound
from corral.images.store import ImageStore
from corral.settings import load_settings
from corral.storage import full
from corral.storage.attachments import attachments
from corral.storage.disks import DiskService, free_port
from corral.store.db import DiskRecord, Store, VMRecord
from corral.vm.quota import Quota
from corral.vm.service import VMService
from corral.vm.spec import VMSpec
from corral.vm.states import VMState


@pytest.fixture
def disks(tmp_path: Path) -> DiskService:
    settings = load_settings({"CORRAL_HOME": str(tmp_path / "home"), "CORRAL_CACHE": str(tmp_path / "cache")})
    vms = VMService(settings, Store(settings.database), ImageStore(settings.images_dir, settings.cache))
    spec = VMSpec(name="vm1", disk="1G", project="p")
    vms.store.insert_vm(VMRecord(spec=spec, id="id-vm1", state=VMState.STOPPED, state_reason="", mac="m",
                                 created_at=0.0, last_exit_reason="", restart_count=0))
    vms.paths("vm1").root.mkdir(parents=True)
    return DiskService(vms)


def virtual_size(path: str) -> int:
    out = subprocess.run(["qemu-img", "info", "-f", "qcow2", "--output=json", path], capture_output=True, check=True)
    return int(json.loads(out.stdout)["virtual-size"])


def test_add_resize_throttle_detach_attach_remove(disks: DiskService) -> None:
    d = asyncio.run(disks.add("vm1", "data", 64 << 20, {"write_bps": 1 << 20, "iops": None}))
    assert d.file.endswith("vms/vm1/disks/data.qcow2") and virtual_size(d.file) == 64 << 20
    assert d.port == 0 and d.serial == "data" and d.limits == {"bps-write": 1 << 20}
    assert [a.port for a in attachments(disks.list_disks("vm1"))] == [0]
    d = asyncio.run(disks.resize("vm1", "data", 128 << 20))
    assert virtual_size(d.file) == 128 << 20 and disks.get("vm1", "data").size == 128 << 20
    d = asyncio.run(disks.set_limits("vm1", "data", {"write_bps": 0, "iops": 50}))
    assert d.limits == {"iops-total": 50}
    asyncio.run(disks.detach("vm1", "data"))
    assert attachments(disks.list_disks("vm1")) == () and Path(d.file).is_file()
    asyncio.run(disks.attach("vm1", "data"))
    assert disks.get("vm1", "data").port == 0
    asyncio.run(disks.remove("vm1", "data"))
    assert disks.list_disks("vm1") == [] and not Path(d.file).exists()
    assert [e.message for e in disks.store.events(vm="vm1") if e.type == "disk"][-1].startswith("disk 'data' removed")


def test_bad_inputs_change_nothing(disks: DiskService) -> None:
    asyncio.run(disks.add("vm1", "data", 64 << 20))
    before = (disks.list_disks("vm1"), sorted(p.name for p in (disks.vms.paths("vm1").root / "disks").iterdir()))
    cases = [
        (NotFound, "no VM named 'nope'", disks.add("nope", "x", 1 << 20)),
        (NotFound, "VM 'vm1' has no disk named 'x' (its disks: data)", disks.resize("vm1", "x", 1 << 30)),
        (Conflict, "already has a disk named 'data'", disks.add("vm1", "data", 1 << 20)),
        (InvalidInput, "shrinking it to 32M would destroy data", disks.resize("vm1", "data", 32 << 20)),
        (InvalidInput, "bad disk name 'Data/x'", disks.add("vm1", "Data/x", 1 << 20)),
        (InvalidInput, "cannot be combined", disks.set_limits("vm1", "data", {"iops": 5, "read_iops": 5})),
        (Conflict, "already attached", disks.attach("vm1", "data")),
    ]
    for exc, text, coro in cases:
        with pytest.raises(exc) as info:
            asyncio.run(coro)
        assert text in info.value.message and "\n" not in info.value.message
    assert (disks.list_disks("vm1"), sorted(p.name for p in (disks.vms.paths("vm1").root / "disks").iterdir())) \
        == before


def test_quota_counts_extra_disks_on_add_and_resize(disks: DiskService) -> None:
    disks.store.put_quota(Quota("project", "p", disk=2 << 30))  # the root disk holds 1G of it
    asyncio.run(disks.add("vm1", "a", 512 << 20))
    with pytest.raises(CapacityError) as info:
        asyncio.run(disks.add("vm1", "b", 1 << 30))
    assert "project 'p' would use 2.5G of disk, 512M over its limit of 2G" in info.value.message
    with pytest.raises(CapacityError, match="512M over its limit"):
        asyncio.run(disks.resize("vm1", "a", 1536 << 20))
    assert [d.name for d in disks.list_disks("vm1")] == ["a"] and disks.get("vm1", "a").size == 512 << 20
    assert not (disks.vms.paths("vm1").root / "disks" / "b.qcow2").exists()
    assert disks.vms.disk_size(disks.vms.get("vm1").spec) == (1 << 30) + (512 << 20)


def test_suspended_vm_keeps_its_devices(disks: DiskService) -> None:
    disks.store.set_state("vm1", VMState.SUSPENDED)
    with pytest.raises(Conflict, match="saved state holds its devices"):
        asyncio.run(disks.add("vm1", "data", 1 << 20))


def test_ports_run_out() -> None:
    used = [DiskRecord(vm="v", name=f"d{i}", file="f", size=1, serial="s", created_at=0, port=i) for i in range(8)]
    with pytest.raises(CapacityError, match="already has 8 disks attached"):
        free_port(used, "v")
    assert free_port(used[:3] + used[4:], "v") == 3


def test_deleting_the_vm_deletes_its_disk_rows(disks: DiskService) -> None:
    asyncio.run(disks.add("vm1", "data", 1 << 20))
    disks.store.delete_vm("vm1")
    assert disks.store.list_disks("vm1") == []


def test_full_disk_names_the_image_and_file_system(tmp_path: Path) -> None:
    d = DiskRecord(vm="v", name="data", file=str(tmp_path / "data.qcow2"), size=1, serial="data", created_at=0)
    assert full.image_of("xd-data", tmp_path / "disk.qcow2", [d]) == tmp_path / "data.qcow2"
    assert full.image_of("root", tmp_path / "disk.qcow2", [d]) == tmp_path / "disk.qcow2"
    reason = full.reason("v", tmp_path / "data.qcow2")
    assert reason.startswith(f"disk full: no space left on the file system at {full.mount_point(tmp_path)}")
    assert "`corral resume v`" in reason
