"""The VM list's cache: records and static VMs' JSON kept until the store changes (this connection or another)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

from corral.api.deps import Services
from corral.api.routes import vms as routes
from corral.daemon.main import build_services
from corral.images.store import ImageStore
from corral.settings import load_settings
from corral.store.db import Store, VMRecord
from corral.vm.spec import VMSpec
from corral.vm.states import VMState


def _listing(svc: Services, label: list[str] | None = None) -> list[dict]:  # type: ignore[type-arg]
    local = SimpleNamespace(scope={})  # a request on the unix socket: the local root (corral.auth)
    r = asyncio.run(routes.list_vms(svc, local, label or [], None, None))  # type: ignore[arg-type]
    return json.loads(r.body)  # type: ignore[attr-defined, no-any-return]


def test_list_follows_every_change(tmp_path: Path) -> None:
    settings = load_settings({"CORRAL_HOME": str(tmp_path)})
    store = Store(tmp_path / "c.db")
    images = ImageStore(settings.images_dir, settings.cache)
    svc = build_services(settings, store, images)
    for i in range(3):
        store.insert_vm(VMRecord(VMSpec(name=f"v{i}", labels={"n": str(i)}), str(uuid.uuid4()), VMState.STOPPED, "",
                                 f"52:54:00:00:00:0{i}", time.time(), "", 0))
    assert [v["state"] for v in _listing(svc)] == ["stopped"] * 3
    assert _listing(svc) == _listing(svc)
    store.set_state("v1", VMState.CRASHED, "boom")  # this connection
    assert [(v["state"], v["state_reason"]) for v in _listing(svc)][1] == ("crashed", "boom")
    other = Store(tmp_path / "c.db")  # another connection (another process, say)
    other.delete_vm("v2")
    assert [v["name"] for v in _listing(svc)] == ["v0", "v1"]
    assert [v["name"] for v in _listing(svc, ["n=0"])] == ["v0"]
    other.close()
    store.close()
