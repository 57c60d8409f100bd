"""``corral images import --oci REF`` (and ``corral launch --oci REF``): an OCI image into the image store.

The order matters, as for disk images (corral.images.importer): the image is copied by skopeo into a private
work directory under the store (blobs verified), its manifest and config are read from that copy (digests checked
again), and only then unpacked by umoci, given Corral's ``/.corral`` and made into an ext4 disk beside tiny's
kernel and an initrd that starts ``/.corral/init``. The result is cached under ``<cache>/oci/images/`` by the
image's manifest digest (and the versions of what Corral adds), so importing or launching the same image again
costs the copy and a hard link, not an unpack. Any failure removes the work directory: nothing is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from corral import paths
from corral.errors import Conflict, InvalidInput
from corral.images import tiny
from corral.images.archive import DebianArchive
from corral.images.artifacts import Manifest, Progress, sha256_file
from corral.images.builders import BUILDERS
from corral.images.importer import NAME_RE
from corral.images.oci import guest, tools
from corral.images.oci.layout import Source, classify, pick, process_of, resolve
from corral.images.store import ImageStore, _virtual_size

MIN_DISK = 1 << 30
_FILES = (paths.IMAGE_KERNEL, paths.IMAGE_INITRD, paths.IMAGE_DISK)


def default_name(digest: str) -> str:
    """The image name ``launch --oci`` uses: the digest's first 12 hex digits, so one image is imported once."""
    return f"oci-{digest.removeprefix('sha256:')[:12]}"


def _check_name(store: ImageStore, name: str, digest: str) -> Manifest | None:
    """The installed image ``name`` when it is this very image (nothing to do), None when the name is free."""
    if not NAME_RE.match(name):
        raise InvalidInput(f"{name!r} is not a valid image name: use lower-case letters, digits, '.', '_' and '-'")
    if name in BUILDERS:
        raise Conflict(f"'{name}' is the name of a built image: import under another --name")
    if (store.dir(name) / paths.IMAGE_MANIFEST).exists():
        m = store.get(name)
        if m.oci is not None and m.source_sha256 == digest.removeprefix("sha256:"):
            return m
        raise Conflict(f"image '{name}' is already installed: remove it first (corral images rm {name})")
    return None


def _check_tag(source: Source) -> Source:
    """A layout's tag is checked against its index.json before skopeo runs, for a one-line error naming the tags."""
    if source.kind != "layout":
        return source
    layout = Path(source.location)
    try:
        index = json.loads((layout / "index.json").read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{layout}/index.json is not readable JSON: {exc}") from None
    desc = pick(index, source.tag, str(layout))
    tag = desc.get("annotations", {}).get("org.opencontainers.image.ref.name")
    return Source("layout", source.location, tag)


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, dirs, files in os.walk(root):
        total += 4096 * (len(dirs) + 1)
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size + 512
            except OSError:
                continue
    return total


def import_oci(store: ImageStore, ref: str, name: str | None, mirror: str,
               progress: Progress | None = None) -> Manifest:
    """Import the OCI image ``ref`` as image ``name`` (default :func:`default_name`): all or nothing."""
    source = _check_tag(classify(ref))
    if name is not None:
        _check_name(store, name, "")  # a bad or taken name fails before any copying
    if progress:
        progress("the tiny image's kernel", 0, None)
    base = store.ensure("tiny", mirror, progress)
    store.images_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=store.images_dir, prefix=".import-oci-"))
    try:
        if progress:
            progress(f"copy {source}", 0, None)
        tools.copy(source, work / "layout")
        digest, _, config = resolve(work / "layout", tools.TAG)
        name = name or default_name(digest)
        if (same := _check_name(store, name, digest)) is not None:
            return same
        cached = store.cache_dir / "oci" / "images" / \
            f"{digest.removeprefix('sha256:')}-{guest.KIT_VERSION}-tiny{tiny.BUILDER_VERSION}"
        if not (cached / paths.IMAGE_MANIFEST).is_file():
            process = process_of(config)
            if progress:
                progress("unpack the layers", 0, None)
            rootfs, uid, gid = tools.unpack(work / "layout", work / "bundle")
            process = process.model_copy(update={"uid": uid, "gid": gid})
            archive = DebianArchive(mirror, tiny.SUITE, store.cache_dir)
            kit, kit_packages = guest.ensure_kit(archive, store.cache_dir, progress)
            guest.install_private(rootfs, kit, process)
            out = work / "out"
            out.mkdir()
            if progress:
                progress("make the root disk", 0, None)
            size = max(MIN_DISK, -(-(2 * _tree_bytes(rootfs) + (256 << 20)) // (64 << 20)) * (64 << 20))
            tiny.make_disk(rootfs, work / "disk.raw", out / paths.IMAGE_DISK, size)
            shutil.rmtree(work / "bundle")
            guest.make_initrd(store.dir("tiny") / paths.IMAGE_INITRD, out / paths.IMAGE_INITRD)
            shutil.copyfile(store.dir("tiny") / paths.IMAGE_KERNEL, out / paths.IMAGE_KERNEL)
            disk = out / paths.IMAGE_DISK
            manifest = Manifest(
                name=name, disk_sha256=sha256_file(disk), disk_virtual_size=_virtual_size(disk),
                size=sum((out / f).stat().st_size for f in _FILES), kernel_cmdline=base.kernel_cmdline,
                build_date=datetime.now(UTC).replace(microsecond=0).isoformat(),
                builder=f"oci {guest.KIT_VERSION}", mirror=mirror, suite=tiny.SUITE,
                packages=[*base.packages, *kit_packages], source=str(source),
                source_sha256=digest.removeprefix("sha256:"), oci=process,
            )
            for f in _FILES:
                (out / f).chmod(0o444)
            (out / paths.IMAGE_MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
            cached.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(out, cached)
            except OSError:
                if not (cached / paths.IMAGE_MANIFEST).is_file():
                    raise
        # the cached build under this import's name: hard links, and a manifest of its own
        named = work / "named"
        named.mkdir()
        for f in _FILES:
            os.link(cached / f, named / f)
        m = Manifest.model_validate_json((cached / paths.IMAGE_MANIFEST).read_text())
        m = m.model_copy(update={"name": name, "source": str(source)})
        (named / paths.IMAGE_MANIFEST).write_text(m.model_dump_json(indent=2) + "\n")
        if progress:
            progress(f"install image {name}", 0, None)
        if (same := _check_name(store, name, digest)) is not None:  # still free, or the same image meanwhile
            return same
        return store.install_from(named, name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
