"""The image store: ``<home>/images/<name>/`` holds one built image as read-only files plus ``manifest.json``.

Why this shape: VM disks are qcow2 overlays whose backing file is the image's disk, so an installed image must never
change under a VM (files are 0444, and an image in use cannot be removed). Builds are slow, so a finished build is
kept in the shared cache (``<cache>/built/<name>/<builder version>/``) and installed from there by hard link; every
step that makes a directory visible is a rename, so a failed build or install leaves nothing behind.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from corral import paths
from corral.errors import Conflict, ImageError, InvalidInput, NotFound
from corral.images.artifacts import BuiltImage, Manifest, Progress, sha256_file
from corral.images.builders import BUILDERS, get_builder
from corral.vm.arch import Arch, image_ref, split_ref

_FILES = (paths.IMAGE_KERNEL, paths.IMAGE_INITRD, paths.IMAGE_DISK)


def _virtual_size(disk: Path) -> int:
    r = subprocess.run(["qemu-img", "info", "--output=json", "-f", "qcow2", str(disk)], capture_output=True,
                       text=True, check=False)
    if r.returncode != 0:
        raise ImageError(f"qemu-img cannot read {disk.name}: {r.stderr.strip()[:200]}")
    return int(json.loads(r.stdout)["virtual-size"])


def manifest_for(built: BuiltImage) -> Manifest:
    """Describe a freshly built image: checksums and sizes are measured, not trusted from the builder."""
    return Manifest(
        name=built.name,
        arch=built.arch,
        disk_sha256=sha256_file(built.disk),
        disk_virtual_size=_virtual_size(built.disk),
        size=sum(p.stat().st_size for p in (built.kernel, built.initrd, built.disk)),
        kernel_cmdline=built.kernel_cmdline,
        build_date=datetime.now(UTC).replace(microsecond=0).isoformat(),
        builder=built.builder,
        mirror=built.mirror,
        suite=built.suite,
        packages=built.packages,
    )


def _write_readonly(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o444)


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:  # another filesystem (or no hard links): copy, it is still one rename away from visible
        shutil.copyfile(src, dest)
    dest.chmod(0o444)


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _check_name(name: str) -> None:
    if name not in BUILDERS:
        raise NotFound(
            f"no image builder '{name}': known images are {', '.join(sorted(BUILDERS))} "
            f"(build one with: corral images build NAME)"
        )


class ImageStore:
    """Installed images under ``images_dir``; finished builds cached under ``cache_dir/built``."""

    def __init__(self, images_dir: Path, cache_dir: Path) -> None:
        self.images_dir = Path(images_dir)
        self.cache_dir = Path(cache_dir)

    # -- reading -------------------------------------------------------------------------------------------------

    def dir(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise InvalidInput(f"'{name}' is not an image name: use one of {', '.join(sorted(BUILDERS))}")
        return self.images_dir / name

    def list(self) -> list[Manifest]:
        """Every installed image with a readable manifest, by name."""
        out = []
        if self.images_dir.is_dir():
            for d in sorted(self.images_dir.iterdir()):
                m = d / paths.IMAGE_MANIFEST
                if d.name.startswith(".") or not m.is_file():
                    continue
                try:
                    out.append(Manifest.model_validate_json(m.read_text()))
                except ValueError:
                    continue  # a damaged entry is not an image; `remove` still deletes it
        return out

    def get(self, name: str) -> Manifest:
        """The installed image whose store key is ``name`` (``tiny``, or ``tiny@aarch64``: corral.vm.arch)."""
        split_ref(name)  # InvalidInput for what is no image name: it is a folder name below
        m = self.dir(name) / paths.IMAGE_MANIFEST
        if not m.is_file():
            have = ", ".join(image_ref(x.name, x.arch) for x in self.list()) or "none"
            bare, arch = split_ref(name)
            if bare in BUILDERS:
                BUILDERS[bare].check_arch(arch)  # a builder without that architecture: say so, not "build it"
            if arch != Arch.X86_64:
                raise NotFound(f"image '{bare}' is not installed for {arch} (installed: {have}); build it with: "
                               f"corral images build {bare} --arch {arch}")
            raise NotFound(f"image '{name}' is not installed (installed: {have}); build it with: "
                           f"corral images build {name}")
        return Manifest.model_validate_json(m.read_text())

    # -- building and installing ---------------------------------------------------------------------------------

    def ensure(self, name: str, mirror: str, progress: Progress | None = None, refresh: bool = False,
               arch: Arch = Arch.X86_64) -> Manifest:
        """The installed image ``name`` for ``arch``: installed from the build cache, or built first. ``refresh``
        rebuilds. Kept under :func:`corral.vm.arch.image_ref` (``tiny`` for x86_64, ``tiny@aarch64``...)."""
        _check_name(name)
        builder = get_builder(name)
        version = builder.version_for(arch)  # InvalidInput if the builder has no such architecture
        ref = image_ref(name, arch)
        target = self.dir(ref)
        if not refresh and (target / paths.IMAGE_MANIFEST).is_file():
            return self.get(ref)
        cached = self.cache_dir / "built" / ref / version
        if refresh or not (cached / paths.IMAGE_MANIFEST).is_file():
            self._build_into_cache(name, mirror, cached, progress, arch)
        if progress:
            progress(f"install image {ref}", 0, None)
        return self.install_from(cached, ref)

    def _build_into_cache(self, name: str, mirror: str, cached: Path, progress: Progress | None,
                          arch: Arch = Arch.X86_64) -> None:
        tmp_root = self.cache_dir / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(dir=tmp_root, prefix=f"build-{image_ref(name, arch)}-"))
        try:
            built = get_builder(name).build(workdir / "work", mirror, self.cache_dir, progress, arch)
            out = workdir / "out"
            self.save_built(built, out)
            cached.parent.mkdir(parents=True, exist_ok=True)
            old = None
            if cached.exists():
                old = cached.with_name(f".old-{cached.name}-{os.getpid()}")
                os.rename(cached, old)
            os.rename(out, cached)
            if old:
                _rmtree(old)
        finally:
            _rmtree(workdir)

    @staticmethod
    def save_built(built: BuiltImage, out: Path) -> Manifest:
        """Move a builder's files into ``out`` under the store's names, with their manifest; all read-only."""
        for f in (built.kernel, built.initrd, built.disk):
            if not f.is_file():
                raise ImageError(
                    f"builder '{built.builder}' produced no {f.name}: rebuild with corral images build NAME"
                )
        out.mkdir(parents=True)
        manifest = manifest_for(built)
        for src, fname in zip((built.kernel, built.initrd, built.disk), _FILES, strict=True):
            shutil.move(str(src), out / fname)
            (out / fname).chmod(0o444)
        _write_readonly(out / paths.IMAGE_MANIFEST, manifest.model_dump_json(indent=2) + "\n")
        return manifest

    def install_from(self, source: Path, name: str) -> Manifest:
        """Install the image in ``source`` (as :meth:`save_built` left it) as ``name``: all or nothing."""
        manifest = Manifest.model_validate_json((source / paths.IMAGE_MANIFEST).read_text())
        target = self.dir(name)
        self.images_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.images_dir, prefix=f".install-{name}-"))
        try:
            files = _FILES if manifest.boot == "kernel" else (paths.IMAGE_DISK,)  # imported: the disk boots itself
            for fname in (*files, paths.IMAGE_MANIFEST):
                if not (source / fname).is_file():
                    raise ImageError(f"built image {name} lacks {fname}: rebuild it with corral images build {name}")
                _link_or_copy(source / fname, tmp / fname)
            tmp.chmod(0o755)
            old = None
            if target.exists():
                old = self.images_dir / f".old-{name}-{os.getpid()}"
                os.rename(target, old)
            os.rename(tmp, target)
            if old:
                _rmtree(old)
        except BaseException:
            _rmtree(tmp)
            raise
        return manifest

    def install(self, built: BuiltImage) -> Manifest:
        """Install a builder's output directly (no build cache): used by tests and by callers that build themselves."""
        self.images_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.images_dir, prefix=f".stage-{built.name}-"))
        try:
            self.save_built(built, staging / "out")
            return self.install_from(staging / "out", image_ref(built.name, built.arch))
        finally:
            _rmtree(staging)

    # -- removing ------------------------------------------------------------------------------------------------

    def remove(self, name: str, users: builtins.list[str]) -> None:
        """Delete an installed image, unless VMs still use it (their disks are overlays on its disk)."""
        target = self.dir(name)
        if users:
            raise Conflict(f"image '{name}' is used by VMs {', '.join(sorted(users))}: delete them first")
        if not target.exists():
            have = ", ".join(x.name for x in self.list()) or "none"
            raise NotFound(f"image '{name}' is not installed (installed: {have})")
        trash = self.images_dir / f".remove-{name}-{os.getpid()}"
        os.rename(target, trash)
        _rmtree(trash)
