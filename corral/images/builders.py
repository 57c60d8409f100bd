"""The image builders Corral knows, by name.

Each builder has a version string that is part of the build-cache key: bump it whenever its output changes, so a
stale cached build is never reused. Builders are imported lazily, so one broken or missing builder module does not
take the others (or the daemon) down with it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from corral.errors import ImageError, InvalidInput, NotFound
from corral.images.artifacts import BuiltImage, Progress
from corral.vm.arch import DEBIAN_ARCH, Arch


@dataclass(frozen=True)
class BuilderInfo:
    name: str
    description: str
    module: str  # imported on first use
    arches: tuple[Arch, ...] = (Arch.X86_64,)  # the guest architectures it builds for

    def _load(self):  # type: ignore[no-untyped-def]
        try:
            return importlib.import_module(self.module)
        except ImportError as exc:
            raise ImageError(f"image builder '{self.name}' is not available ({exc}): reinstall Corral") from exc

    @property
    def version(self) -> str:
        """BUILDER_VERSION of the builder module: part of the build-cache key."""
        return str(self._load().BUILDER_VERSION)

    def version_for(self, arch: Arch) -> str:
        """The build-cache key's version for ``arch``: BUILDER_VERSION for x86_64, ARCH_BUILDER_VERSION else (a
        foreign build can change without invalidating every cached x86_64 image)."""
        self.check_arch(arch)
        return self.version if arch == Arch.X86_64 else str(self._load().ARCH_BUILDER_VERSION)

    def check_arch(self, arch: Arch) -> None:
        """InvalidInput, naming what there is, if this builder has no ``arch`` build."""
        if arch not in self.arches:
            have = ", ".join(a.value for a in self.arches)
            raise InvalidInput(f"image '{self.name}' is built for {have} only, not {arch}: use --image tiny for "
                               f"{arch} guests")

    def build(self, workdir: Path, mirror: str, cache_dir: Path, progress: Progress | None = None,
              arch: Arch = Arch.X86_64) -> BuiltImage:
        """Build the image for ``arch`` in ``workdir`` (blocking; the daemon runs it in a thread)."""
        self.check_arch(arch)
        mod = self._load()
        if self.name == "tiny":
            from corral.images.archive import DebianArchive  # httpx and the index parser: only when building
            from corral.images.tiny_arch import FOREIGN

            suite = FOREIGN[arch].suite if arch in FOREIGN else mod.SUITE
            archive = DebianArchive(mirror, suite, cache_dir, arch=DEBIAN_ARCH[arch])
            return mod.build_tiny(workdir, archive, progress, arch)  # type: ignore[no-any-return]
        return mod.build_debian12(workdir, mirror, cache_dir, progress)  # type: ignore[no-any-return]


BUILDERS: dict[str, BuilderInfo] = {
    "tiny": BuilderInfo("tiny", "busybox + qemu-guest-agent on Debian 12's cloud kernel; boots in seconds",
                        "corral.images.tiny", (Arch.X86_64, Arch.AARCH64, Arch.RISCV64)),
    "debian-12": BuilderInfo("debian-12", "Debian 12 (bookworm) with systemd, apt and qemu-guest-agent",
                             "corral.images.debian12"),
}


def get_builder(name: str) -> BuilderInfo:
    """The builder called ``name``, or NotFound listing the builders there are."""
    try:
        return BUILDERS[name]
    except KeyError:
        raise NotFound(f"no image builder '{name}': known images are {', '.join(sorted(BUILDERS))}") from None
