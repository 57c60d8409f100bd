"""Build the test images into the shared cache once, before the parallel test run (so workers do not race).

Usage: prepare_images.py NAME[@ARCH]... (built copies in $CORRAL_CACHE/built are reused; nothing is rebuilt).
``tiny@aarch64`` and ``tiny@riscv64`` are tiny for those guest architectures (docs/explanation/architectures.md).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from corral.images.store import ImageStore
from corral.settings import load_settings
from corral.vm.arch import split_ref


class Reporter:
    """Prints a builder's progress every few seconds (CI logs stay short)."""

    def __init__(self, name: str) -> None:
        self.name, self.last = name, 0.0

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if time.monotonic() - self.last > 5:
            self.last = time.monotonic()
            print(f"  {self.name}: {stage} {done}/{total or '?'}", flush=True)


def main(names: list[str]) -> None:
    settings = load_settings()
    with tempfile.TemporaryDirectory(prefix="corral-prepare-") as tmp:
        store = ImageStore(Path(tmp) / "images", settings.cache)
        for ref in names:
            t0 = time.monotonic()
            name, arch = split_ref(ref)
            m = store.ensure(name, settings.mirror, Reporter(ref), arch=arch)
            print(f"image {ref}: ready ({m.size >> 20} MiB, {time.monotonic() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["tiny"])
