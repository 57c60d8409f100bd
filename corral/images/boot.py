"""How a VM boots from an installed image: the kernel beside the disk (built images), or the disk itself (imported
cloud images) through SeaBIOS or OVMF."""

from __future__ import annotations

import shutil
from pathlib import Path

from corral import paths as P
from corral.engine.cmdline import BootSource
from corral.errors import EngineError
from corral.images.artifacts import Manifest
from corral.images.store import ImageStore
from corral.vm.arch import host_arch, image_ref

#: Debian's ovmf package: the firmware code (read-only, shared) and the template of a VM's variable store.
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
VM_EFI_VARS = "efivars.fd"


def boot_source(image_dir: Path, manifest: Manifest, vm_root: Path) -> BootSource:
    """The :class:`BootSource` for a VM of ``manifest``; a UEFI image gets its own copy of the OVMF variables."""
    disk = image_dir / P.IMAGE_DISK
    if manifest.boot == "kernel":
        return BootSource(kernel=image_dir / P.IMAGE_KERNEL, initrd=image_dir / P.IMAGE_INITRD,
                          cmdline=manifest.kernel_cmdline, base_disk=disk, base_format=manifest.disk_format)
    if manifest.firmware == "bios":
        return BootSource(kernel=None, initrd=None, cmdline="", base_disk=disk, base_format=manifest.disk_format,
                          mode="disk")
    if not OVMF_CODE.is_file() or not OVMF_VARS.is_file():
        raise EngineError(f"image '{manifest.name}' boots with UEFI but OVMF is not installed: apt-get install ovmf")
    vars_copy = vm_root / VM_EFI_VARS
    if not vars_copy.exists():
        shutil.copyfile(OVMF_VARS, vars_copy)
        vars_copy.chmod(0o600)
    return BootSource(kernel=None, initrd=None, cmdline="", base_disk=disk, base_format=manifest.disk_format,
                      mode="disk", firmware="uefi", ovmf_code=OVMF_CODE, ovmf_vars=vars_copy)


def probe_kernel(store: ImageStore) -> Path | None:
    """A kernel to probe KVM with when the VM's own image has none: any installed kernel-boot image's of the host's
    architecture (KVM runs no other)."""
    for m in store.list():
        k = store.dir(image_ref(m.name, m.arch)) / P.IMAGE_KERNEL
        if m.boot == "kernel" and m.arch == host_arch() and k.is_file():
            return k
    return None
