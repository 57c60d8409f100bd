"""Guest architectures: the names a user gives (``--arch``), the host's own, and how an image is keyed by both.

One VM spec field (:attr:`corral.vm.spec.VMSpec.arch`) says which architecture a guest is; everything that differs
per architecture on the QEMU side is data in :data:`corral.engine.cmdline.ARCHES`, and on the image side in
:mod:`corral.images.tiny`. See docs/explanation/architectures.md.
"""

from __future__ import annotations

import platform
import re
from enum import StrEnum

from corral.errors import InvalidInput


class Arch(StrEnum):
    """A guest architecture, by the name the kernel gives it (``uname -m``)."""

    X86_64 = "x86_64"
    AARCH64 = "aarch64"
    RISCV64 = "riscv64"


#: Debian's name of each architecture (its archive's binary-<arch> directories).
DEBIAN_ARCH: dict[Arch, str] = {Arch.X86_64: "amd64", Arch.AARCH64: "arm64", Arch.RISCV64: "riscv64"}

_MACHINE_NAMES = {"x86_64": Arch.X86_64, "amd64": Arch.X86_64, "aarch64": Arch.AARCH64, "arm64": Arch.AARCH64,
                  "riscv64": Arch.RISCV64}


def host_arch() -> Arch:
    """The host's architecture: the default of every VM, and the only one KVM can run. A host Corral has no guest
    architecture for (say ppc64le) counts as x86_64, the architecture Corral's settings default to."""
    return _MACHINE_NAMES.get(platform.machine().lower(), Arch.X86_64)


def image_ref(name: str, arch: Arch | str) -> str:
    """The image store's key of image ``name`` built for ``arch``: the bare name for x86_64 (so every store made
    before architectures existed keeps its images where they are), ``name@arch`` otherwise. ``@`` is never part of
    an image name, so the two cannot clash."""
    return name if Arch(arch) == Arch.X86_64 else f"{name}@{Arch(arch).value}"


#: What an image name may be: also the name of its folder in the image store, so no '/', '@' or leading dot.
IMAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def split_ref(ref: str) -> tuple[str, Arch]:
    """The image name and architecture of a store key made by :func:`image_ref`; InvalidInput for a key that is
    not one (a name a user typed reaches the image store as a key)."""
    name, at, arch = ref.partition("@")
    if not IMAGE_NAME.match(name) or (at and arch not in Arch.__members__.values()):
        raise InvalidInput(f"{ref!r} is not an image name: use lower-case letters, digits, '.', '_' and '-' "
                           f"(up to 63), optionally @ARCH ({', '.join(a.value for a in Arch)})")
    return name, Arch(arch) if arch else Arch.X86_64
