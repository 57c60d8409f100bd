"""cloud-init NoCloud seeds (work in progress: filled in by the cloud-init work)."""

from __future__ import annotations

from pathlib import Path

from corral.errors import InvalidInput
from corral.paths import VMPaths
from corral.vm.spec import VMSpec


def make_seed(spec: VMSpec, paths: VMPaths, public_key: str) -> Path | None:
    """The seed for ``spec``, or None when the spec asks for no cloud-init."""
    if spec.cloud_init is None and not spec.ssh_keys and spec.hostname is None:
        return None
    raise InvalidInput("cloud-init seeds are not supported yet")
