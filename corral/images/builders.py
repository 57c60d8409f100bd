"""The image builders Corral knows, by name.

Each builder has a version string that is part of the build-cache key: bump it whenever its output changes, so a
stale cached build is never reused. Builders are imported lazily, so one broken or missing builder module does not
take the others (or the daemon) down with it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from corral.errors import ImageError, NotFound
from corral.images.artifacts import BuiltImage, Progress


@dataclass(frozen=True)
class BuilderInfo:
    name: str
    description: str
    module: str  # imported on first use

    def _load(self):  # type: ignore[no-untyped-def]
        try:
            return importlib.import_module(self.module)
        except ImportError as exc:
            raise ImageError(f"image builder '{self.name}' is not available ({exc}): reinstall Corral") from exc

    @property
    def version(self) -> str:
        """BUILDER_VERSION of the builder module: part of the build-cache key."""
        return str(self._load().BUILDER_VERSION)

    def build(self, workdir: Path, mirror: str, cache_dir: Path, progress: Progress | None = None) -> BuiltImage:
        """Build the image in ``workdir`` (blocking; the daemon runs it in a thread)."""
        mod = self._load()
        if self.name == "tiny":
            from corral.images.archive import DebianArchive  # httpx and the index parser: only when building

            archive = DebianArchive(mirror, mod.SUITE, cache_dir)
            return mod.build_tiny(workdir, archive, progress)  # type: ignore[no-any-return]
        return mod.build_debian12(workdir, mirror, cache_dir, progress)  # type: ignore[no-any-return]


BUILDERS: dict[str, BuilderInfo] = {
    "tiny": BuilderInfo("tiny", "busybox + qemu-guest-agent on Debian 12's cloud kernel; boots in seconds",
                        "corral.images.tiny"),
    "debian-12": BuilderInfo("debian-12", "Debian 12 (bookworm) with systemd, apt and qemu-guest-agent",
                             "corral.images.debian12"),
}


def get_builder(name: str) -> BuilderInfo:
    """The builder called ``name``, or NotFound listing the builders there are."""
    try:
        return BUILDERS[name]
    except KeyError:
        raise NotFound(f"no image builder '{name}': known images are {', '.join(sorted(BUILDERS))}") from None
