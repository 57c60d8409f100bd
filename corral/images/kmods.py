"""9p kernel modules for Debian's cloud kernel, built from Debian's own kernel source when an image is built.

Why: shared folders (``--mount``) are virtio-9p, and ``linux-image-cloud-amd64`` is configured without 9p
(``CONFIG_NET_9P is not set``). Debian's generic kernel has it, but boots ``tiny`` 3-7 s slower under TCG, and every
test boots ``tiny``. ``net/9p`` and ``fs/9p`` are self-contained; what they use from the rest of the kernel (virtio,
netfs) the cloud kernel has, built in or as modules. So they are built out of tree (``make M=``) from
``linux-source-X.Y`` against ``linux-headers-<release>`` (with its ``-common`` part and ``linux-kbuild-X.Y``), all
at exactly the kernel package's Debian version and from the same verified archive index as the kernel: vermagic and
the modversions CRCs (from the headers' ``Module.symvers``) match by construction, and the vermagic is checked.
Only ``9p.ko`` options that need nothing else are on (no fscache, ACL or security labels: kbuild's ``CONFIG_*=m``
on the command line does not reach ``autoconf.h``, so every optional ``IS_ENABLED`` part is off).

The modules are unsigned: the cloud kernel has ``CONFIG_MODULE_SIG`` but not ``MODULE_SIG_FORCE``, so they load
(and taint the kernel, ``E``). Lockdown would refuse them only under UEFI Secure Boot, which Corral's kernel boot
never uses.

Built modules are cached in ``cache_dir/kmods/<release>_<version>-<KMODS_VERSION>/``: only the first image build for
a kernel pays (about 35 s on two busy cores with the .debs cached, half of it unpacking the source tarball). The
host needs gcc-12 (the kernel's compiler), make, strip (binutils) and libelf1 (objtool); ``scripts/setup.sh``
installs them. Nothing here runs as root or touches ``/usr/src``: everything is unpacked into a temporary directory
in the cache.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from corral.errors import ImageError
from corral.images.archive import DebianArchive, Package, Progress, parse_relation

#: Part of the cache key: bump it when the way the modules are built changes.
KMODS_VERSION = "1"
#: The modules, in load order (each needs the ones before it; 9p also needs the kernel's netfs).
NINEP = ("9pnet", "9pnet_virtio", "9p")
# Source directory -> the kbuild options that select its modules.
_BUILDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("net/9p", ("CONFIG_NET_9P=m", "CONFIG_NET_9P_VIRTIO=m")),
    ("fs/9p", ("CONFIG_9P_FS=m",)),
)


def _note(progress: Progress | None, what: str) -> None:
    if progress:
        progress(what, 0, None)


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        r = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    except FileNotFoundError as exc:
        raise ImageError(f"{what}: {cmd[0]} is not installed; run scripts/setup.sh (it installs the build "
                         "tools for the 9p modules)") from exc
    if r.returncode != 0:
        tail = " | ".join(r.stdout.strip().splitlines()[-4:])
        raise ImageError(f"{what} failed (exit {r.returncode}): {tail}")
    return r.stdout


def source_packages(archive: DebianArchive, release: str, version: str) -> list[Package]:
    """linux-headers-<release>, its -common part, linux-kbuild and linux-source, all at exactly ``version``.

    NotFound (naming the versions there are) if the archive index lacks one at that version: modules built from
    other sources could carry other symbol CRCs, and the kernel would refuse them.
    """
    headers = archive.package_version(f"linux-headers-{release}", version)
    names = [alt for group in parse_relation(headers.depends) for alt in group
             if re.fullmatch(r"linux-headers-.*-common|linux-kbuild-[0-9.]+", alt)]
    m = re.match(r"(\d+\.\d+)", version)
    if len(names) != 2 or m is None:
        raise ImageError(f"linux-headers-{release} {version} does not depend on one -common and one linux-kbuild "
                         f"package ({names}): the Debian kernel packaging changed")
    return [headers, *(archive.package_version(n, version) for n in names),
            archive.package_version(f"linux-source-{m.group(1)}", version)]


def build_9p(archive: DebianArchive, release: str, version: str, progress: Progress | None = None
             ) -> tuple[list[Path], list[Package]]:
    """The 9p modules (in :data:`NINEP` order) for kernel ``release`` (``6.1.0-50-cloud-amd64``) of Debian
    ``version`` (``6.1.176-1``), and the packages they were built from.

    Taken from the cache when built before. If this fails nothing is cached (a later build starts again).
    """
    pkgs = source_packages(archive, release, version)
    out = archive.cache_dir / "kmods" / f"{release}_{version}-{KMODS_VERSION}"
    kos = [out / f"{name}.ko" for name in NINEP]
    if all(ko.is_file() for ko in kos):
        return kos, pkgs
    (archive.cache_dir / "kmods").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=archive.cache_dir / "kmods") as tmp:
        work = Path(tmp)
        root = work / "root"
        for i, pkg in enumerate(pkgs):
            _note(progress, f"fetch {pkg.name} ({i + 1}/{len(pkgs)})")
            archive.extract(archive.download(pkg, progress), root)
        headers = root / "usr/src" / f"linux-headers-{release}"
        common = next(iter(sorted((root / "usr/src").glob("linux-headers-*-common"))), None)
        tarball = next(iter(sorted((root / "usr/src").glob("linux-source-*.tar.xz"))), None)
        if not (headers / "Module.symvers").is_file() or common is None or tarball is None:
            raise ImageError(f"the headers or source of {release} {version} are not where Debian puts them "
                             "(usr/src/linux-headers-*, linux-source-*.tar.xz): the packaging changed")
        # The flavour's Makefile includes the -common one by its absolute /usr/src path: point it at ours. Its
        # scripts/ and tools/ are relative symlinks into linux-kbuild, which is unpacked beside it.
        (headers / "Makefile").write_text(f"include {common}/Makefile\n")
        top = tarball.name.removesuffix(".tar.xz")
        _note(progress, f"unpack {', '.join(d for d, _ in _BUILDS)} from {tarball.name}")
        _run(["tar", "-xJf", str(tarball), "-C", str(work), *(f"{top}/{d}" for d, _ in _BUILDS)],
             f"unpack {tarball.name}")
        tarball.unlink()
        symvers: list[str] = []
        for d, options in _BUILDS:
            _note(progress, f"build {d} for {release}")
            src = work / top / d
            extra = [f"KBUILD_EXTRA_SYMBOLS={' '.join(symvers)}"] if symvers else []
            log = _run(["make", "-C", str(headers), f"M={src}", f"-j{os.cpu_count() or 1}", *options, *extra,
                        "modules"], f"build the {d} modules against linux-headers-{release}")
            if "undefined!" in log:
                raise ImageError(f"{d} uses symbols {release} does not export: "
                                 + " | ".join(line for line in log.splitlines() if "undefined!" in line)[:300])
            symvers.append(str(src / "Module.symvers"))
        staged = work / "out"
        staged.mkdir()
        for name in NINEP:
            built = next((work / top / d / f"{name}.ko" for d, _ in _BUILDS
                          if (work / top / d / f"{name}.ko").is_file()), None)
            if built is None:
                raise ImageError(f"building 9p for {release} made no {name}.ko: the kernel source changed")
            # Debug info is 90% of each file; Debian ships its own modules stripped the same way.
            _run(["strip", "--strip-debug", "-o", str(staged / f"{name}.ko"), str(built)], f"strip {name}.ko")
            magic = vermagic(staged / f"{name}.ko")
            if magic.split(" ")[0] != release:
                raise ImageError(f"{name}.ko was built for '{magic}', not {release}: the headers do not match")
        shutil.rmtree(out, ignore_errors=True)
        try:
            staged.rename(out)
        except OSError:  # another build of the same kernel's modules finished first: use its files
            if not all(ko.is_file() for ko in kos):
                raise
    return kos, pkgs


def vermagic(ko: Path) -> str:
    """A module's vermagic string (``6.1.0-50-cloud-amd64 SMP preempt mod_unload modversions``)."""
    m = re.search(rb"(?:^|\0)vermagic=([^\0]*)\0", ko.read_bytes())
    return m.group(1).decode().strip() if m else ""


def install(kos: list[Path], moddir: Path) -> None:
    """Copy the modules into ``moddir/extra`` (``moddir`` is ``lib/modules/<release>``), where depmod finds them."""
    extra = moddir / "extra"
    extra.mkdir(parents=True, exist_ok=True)
    for ko in kos:
        shutil.copyfile(ko, extra / ko.name)
