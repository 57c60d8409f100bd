"""cloud-init NoCloud seeds: an ISO 9660 volume labelled ``cidata`` holding ``user-data`` and ``meta-data``.

Made with pycdlib (pure Python, no host tool), with Joliet and Rock Ridge so that every reader sees the exact file
names. ``meta-data`` gives the instance id (the VM's UUID: cloud-init runs its once-per-instance modules once per
VM), the hostname and the public keys (Corral's own key for the VM, then the user's ``--ssh-key`` keys), so that
keys and hostname apply even when the user brings their own ``user-data``. Without user-data, a small
``#cloud-config`` is written from the keys and hostname.

Only images that have cloud-init act on the seed (``debian-12``, and imported cloud images); on ``tiny`` the seed
is an unused read-only disk.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from corral.errors import InvalidInput
from corral.paths import VMPaths
from corral.vm.spec import VMSpec

#: user-data larger than this is refused (cloud-init's own NoCloud reader has no limit; a seed is not a data disk).
MAX_USER_DATA = 1 << 20


def _yaml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid YAML flow scalar, quoting included


def meta_data(spec: VMSpec, vm_id: str, keys: list[str]) -> str:
    lines = [f"instance-id: {_yaml_str(vm_id)}", f"local-hostname: {_yaml_str(spec.guest_hostname)}"]
    if keys:
        lines.append("public-keys:")
        lines += [f"  - {_yaml_str(k)}" for k in keys]
    return "\n".join(lines) + "\n"


def default_user_data(spec: VMSpec, keys: list[str]) -> str:
    """The ``#cloud-config`` used when the user gave no user-data: hostname and keys (root included)."""
    lines = ["#cloud-config", f"hostname: {_yaml_str(spec.guest_hostname)}", "preserve_hostname: false",
             "disable_root: false"]  # the keys also log in as root, Corral's SSH user
    if keys:
        lines.append("ssh_authorized_keys:")
        lines += [f"  - {_yaml_str(k)}" for k in keys]
    return "\n".join(lines) + "\n"


def build_iso(files: dict[str, bytes], dest: Path) -> None:
    """Write an ISO 9660 (Joliet + Rock Ridge) volume labelled ``cidata`` holding ``files`` at its root."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    try:
        for name, data in files.items():
            iso_name = name.upper().replace("-", "_")[:30] + ".;1"
            iso.add_fp(io.BytesIO(data), len(data), f"/{iso_name}", rr_name=name, joliet_path=f"/{name}")
        tmp = dest.with_name(f".{dest.name}.tmp")
        iso.write(str(tmp))
        os.replace(tmp, dest)
    finally:
        iso.close()


def wanted(spec: VMSpec) -> bool:
    """Does ``spec`` ask for a cloud-init seed disk (user-data, SSH keys or a hostname)?"""
    return spec.cloud_init is not None or bool(spec.ssh_keys) or spec.hostname is not None


def make_seed(spec: VMSpec, paths: VMPaths, public_key: str, vm_id: str | None = None) -> Path | None:
    """The seed for ``spec`` written at ``paths.seed``, or None when the spec asks for no cloud-init.

    The instance id is the VM's UUID (``vm_id``; by default the VM directory's name, which is stable too).
    """
    if not wanted(spec):
        paths.seed.unlink(missing_ok=True)
        return None
    if spec.cloud_init is not None and len(spec.cloud_init.encode()) > MAX_USER_DATA:
        raise InvalidInput(f"cloud-init user-data is larger than {MAX_USER_DATA >> 10} KiB")
    keys = [k for k in [public_key.strip(), *(k.strip() for k in spec.ssh_keys)] if k]
    user_data = spec.cloud_init if spec.cloud_init is not None else default_user_data(spec, keys)
    build_iso({"user-data": user_data.encode(), "meta-data": meta_data(spec, vm_id or paths.root.name, keys).encode()},
              paths.seed)
    return paths.seed
