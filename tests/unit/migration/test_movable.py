"""What a live migration refuses to move, the export names, the address the target gives, the policy rows."""

from __future__ import annotations

import pytest

from corral.auth import policy
from corral.errors import InvalidInput
from corral.migration.incoming import check_movable
from corral.migration.models import IncomingDisk, export_key
from corral.vm.spec import VMSpec


def test_host_folders_and_private_networks_are_refused() -> None:
    check_movable(VMSpec(name="ok", image="tiny"))
    with pytest.raises(InvalidInput, match="shares host folders"):
        check_movable(VMSpec.model_validate({"name": "m", "image": "tiny", "mounts": ["/srv:/srv"]}))
    with pytest.raises(InvalidInput, match="private networks"):
        check_movable(VMSpec(name="n", image="tiny", networks=["lan"]))


def test_export_names() -> None:
    assert export_key(IncomingDisk(root=True, name="", size=1 << 20)) == "root"
    assert export_key(IncomingDisk(root=False, name="root", size=1 << 20, port=0)) == "disk-root"


def test_the_routes_are_the_admins() -> None:
    for method, path in (("POST", "/v1/migrations/incoming"), ("POST", "/v1/migrations/incoming/{name}/commit"),
                         ("DELETE", "/v1/migrations/incoming/{name}"), ("POST", "/v1/vms/{name}/migrate")):
        assert policy.rule_for(method, path) == policy.ADMIN
        assert (method, path) in policy.POLICY


@pytest.mark.parametrize(("listen", "reached", "expected"), [
    ("10.1.2.3:8443", "10.9.9.9", "10.1.2.3"),  # its own listen address
    ("0.0.0.0:8443", "10.9.9.9", "10.9.9.9"),  # every address: the one the source reached it at
    ("[::]:8443", None, "127.0.0.1"),
    (None, None, "127.0.0.1"),
])
def test_the_target_address(listen: str | None, reached: str | None, expected: str) -> None:
    from types import SimpleNamespace

    from corral.migration.service import MigrationService

    svc = MigrationService.__new__(MigrationService)
    svc.vms = SimpleNamespace(settings=SimpleNamespace(listen=listen))  # type: ignore[assignment]
    assert svc.address(reached) == expected
