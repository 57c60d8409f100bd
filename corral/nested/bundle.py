"""A bundle that installs Corral into a ``debian-12`` guest that has no internet: everything comes from the host.

What it holds (``<cache>/nested/`` by default, made again cheaply: every piece is cached):

- ``debs/``: QEMU and qemu-img (``qemu-system-x86``, ``qemu-utils``) with the part of their dependency closure the
  ``debian-12`` image lacks, fetched and verified by Corral's own archive client (:mod:`corral.images.archive`)
  from the suite the image was built from, so every version fits the guest's;
- ``wheels/``: Corral's wheel, built from this source tree, and the wheels of its dependencies (``pip wheel``, at
  the versions this Corral runs with, for the host's Python, which is the guest's: both are Debian 12's 3.11);
- ``site.tar``: those wheels installed (``pip install --target``) and compiled, ready to unpack in the guest;
- ``images/NAME/VERSION/``: built images from the host's build cache (hard links), so the inner Corral need not
  build any (building needs the archive);
- ``install.sh``: run as root in the guest, it installs all of that (see :data:`INSTALL_SH`).

A user shares the folder with the VM and runs the script (docs/explanation/nested.md)::

    python -m corral.nested.bundle              # prints the bundle's path
    corral launch outer --image debian-12 --memory 2G --cpus 2 --disk 6G --mount ~/.cache/corral/nested:/mnt/corral
    corral exec outer -- sh /mnt/corral/install.sh

If making the bundle fails, what was already cached stays (and is checked again next time); the bundle is never
left with a partial file: downloads go through temp files, and the script is written last.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path

from corral.errors import ImageError
from corral.images.archive import DebianArchive, Progress
from corral.images.builders import get_builder
from corral.settings import load_settings

#: The folder of the bundle under the cache.
BUNDLE_DIR = "nested"
#: What the inner Corral runs VMs with.
QEMU_PACKAGES = ("qemu-system-x86", "qemu-utils")
#: The image whose guest the bundle installs into: its package list says what the guest already has.
GUEST_IMAGE = "debian-12"
#: What building Corral's wheel needs (pyproject.toml's build-system, and bdist_wheel's package).
BUILD_REQUIRES = ("setuptools>=68", "wheel")
#: Where install.sh puts Corral in the guest (run by the guest's own python3).
GUEST_PREFIX = "/opt/corral"

#: The guest side. ``dpkg -i`` of every .deb at once orders them itself; ``--force-unsafe-io`` skips its fsync of
#: every file, which under TCG costs minutes (a crash during the install means running it again). Corral and its
#: dependencies are unpacked as installed and compiled on the host (``site.tar``): pip and compiling ~800 modules in the
#: guest would take minutes more under TCG. A systemd unit runs corrald (at boot, and now), as root, with its
#: home in /root/.local/share/corral. The images are copied to the guest's own build cache, where its Corral finds
#: them as built.
INSTALL_SH = f"""\
#!/bin/sh
# Install Corral into this Debian 12 guest from the bundle beside this script (made on the host by
# `python -m corral.nested.bundle`); needs no network. Run as root. Running it again installs it again.
set -eu
B=$(cd "$(dirname "$0")" && pwd)
export DEBIAN_FRONTEND=noninteractive
dpkg -i --force-unsafe-io --force-confold "$B"/debs/*.deb >/dev/null
rm -rf {GUEST_PREFIX}.new
mkdir -p {GUEST_PREFIX}.new
tar -xf "$B"/site.tar -C {GUEST_PREFIX}.new
rm -rf {GUEST_PREFIX}
mv {GUEST_PREFIX}.new {GUEST_PREFIX}
for cmd in corral:corral.cli.main corrald:corral.daemon.main; do
    rm -f /usr/local/bin/${{cmd%%:*}}
    cat > /usr/local/bin/${{cmd%%:*}} <<EOS
#!/bin/sh
export PYTHONPATH={GUEST_PREFIX}/site\\${{PYTHONPATH:+:\\$PYTHONPATH}}
exec python3 -c 'import sys; from ${{cmd#*:}} import main; sys.argv[0] = "${{cmd%%:*}}"; sys.exit(main())' "\\$@"
EOS
    chmod 755 /usr/local/bin/${{cmd%%:*}}
done
cache="${{CORRAL_CACHE:-/root/.cache/corral}}/built"
mkdir -p "$cache"
cp -R "$B"/images/. "$cache"/
cat > /etc/systemd/system/corrald.service <<EOS
[Unit]
Description=Corral daemon (corrald)
After=network.target

[Service]
User=root
Environment=PYTHONPATH={GUEST_PREFIX}/site
ExecStart=/usr/bin/python3 -m corral.daemon.main
KillMode=process

[Install]
WantedBy=multi-user.target
EOS
systemctl daemon-reload
systemctl enable corrald.service 2>/dev/null
systemctl restart corrald.service
echo "corral installed in {GUEST_PREFIX}; corrald starting (systemctl status corrald)"
"""


def source_root() -> Path:
    """The source tree this Corral runs from (the wheel is built from it)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise ImageError(f"no pyproject.toml in {root}: the bundle builds Corral's wheel from a source checkout")
    return root


def guest_packages(cache_dir: Path) -> tuple[str, str, set[str]]:
    """The guest image's (mirror, suite, package names), from its built manifest in the cache."""
    version = get_builder(GUEST_IMAGE).version
    manifest = cache_dir / "built" / GUEST_IMAGE / version / "manifest.json"
    try:
        m = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise ImageError(f"no built {GUEST_IMAGE} image in {manifest.parent}: build it first "
                         f"(corral images build {GUEST_IMAGE})") from exc
    return m["mirror"], m["suite"], {p["name"] for p in m["packages"]}


def fetch_debs(cache_dir: Path, out: Path, progress: Progress | None = None) -> list[Path]:
    """QEMU's packages and what they need beyond the guest image's packages, verified, linked into ``out``.

    The image's packages count as installed: an alternative the guest already has satisfies a dependency."""
    mirror, suite, have = guest_packages(cache_dir)
    archive = DebianArchive(mirror, suite, cache_dir)
    wanted = archive.resolve(QEMU_PACKAGES, progress, installed=have)
    out.mkdir(parents=True, exist_ok=True)
    names = set()
    for pkg in wanted:
        deb = archive.download(pkg, progress)
        names.add(deb.name)
        _link(deb, out / deb.name)
    for old in out.glob("*.deb"):
        if old.name not in names:  # from an older archive state: dpkg would be given two versions
            old.unlink()
    return sorted(out / n for n in names)


def build_wheels(out: Path, source: Path, python: str = sys.executable) -> list[Path]:
    """Corral's wheel from ``source``, its dependencies' wheels and pip's, into ``out``.

    Offline when ``out`` already has every dependency (the usual case after the first time); otherwise pip fetches
    what is missing from its index."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("corral-*.whl"):
        old.unlink()
    tools = out.parent / "build-tools"  # the build backend's wheels (pyproject's build-system), kept for next time
    if not list(tools.glob("setuptools-*.whl")) or not list(tools.glob("wheel-*.whl")):
        _pip(python, "download", "--quiet", "--disable-pip-version-check", "--dest", str(tools), *BUILD_REQUIRES)
    with tempfile.TemporaryDirectory(prefix="corral-wheel-") as tmp:
        _pip(python, "wheel", "--quiet", "--disable-pip-version-check", "--no-deps", "--no-index", "--find-links",
             str(tools), "--wheel-dir", tmp, str(source))
        built = next(Path(tmp).glob("corral-*.whl"))
        shutil.move(built, out / built.name)
    wheel = next(out.glob("corral-*.whl"))
    with tempfile.NamedTemporaryFile("w", prefix="corral-constraints-", suffix=".txt") as pins:
        pins.write(_freeze(python))  # the versions this Corral runs (and was tested) with, also in the guest
        pins.flush()
        base = ("--quiet", "--disable-pip-version-check", "--constraint", pins.name, "--find-links", str(out),
                "--wheel-dir", str(out))
        try:
            _pip(python, "wheel", *base, "--no-index", str(wheel))
        except ImageError:
            _pip(python, "wheel", *base, str(wheel))
    return sorted(out.glob("*.whl"))


def build_site(wheels: Path, out: Path, python: str = sys.executable) -> None:
    """Corral and its dependencies installed from ``wheels`` (``pip install --target``), every module compiled
    (pyc checked by hash, not by time: the guest's copy has other times), as one tar file ``out``: one long read
    over 9p, where copying its 8,000 files one by one took minutes under TCG. The guest's Python must be this
    one's minor version (3.11 on both: the guest is Debian 12; pyc and binary wheels depend on it)."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        wheel = next(wheels.glob("corral-*.whl"))
        _pip(python, "install", "--quiet", "--disable-pip-version-check", "--no-index", "--find-links", str(wheels),
             "--no-compile", "--target", str(tmp), str(wheel))
        shutil.rmtree(tmp / "bin", ignore_errors=True)  # scripts for this host's python: the guest gets its own
        r = subprocess.run([python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
                            str(tmp)], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise ImageError(f"compiling the guest's Corral failed: {(r.stdout + r.stderr).strip()[-200:]}")
        part = out.with_name(f".{out.name}.{os.getpid()}.part")
        try:
            with tarfile.open(part, "w") as tar:
                tar.add(tmp, arcname="site")
            os.replace(part, out)
        finally:
            part.unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _freeze(python: str) -> str:
    """``pip freeze`` of ``python``'s environment without Corral itself (installed from its source)."""
    r = subprocess.run([python, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True,
                       check=False)
    return "".join(ln + "\n" for ln in r.stdout.splitlines() if ln and not ln.startswith(("#", "corral", "-e")))


def _pip(python: str, *args: str) -> None:
    r = subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise ImageError(f"pip {args[0]} failed: {last}")


def link_images(cache_dir: Path, out: Path, names: Iterable[str]) -> None:
    """The built images ``names`` (from the build cache, as the builders' versions key them) linked into ``out``."""
    for name in names:
        version = get_builder(name).version
        src = cache_dir / "built" / name / version
        if not (src / "manifest.json").is_file():
            raise ImageError(f"no built {name} image in {src}: build it first (corral images build {name})")
        dest = out / name / version
        dest.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            _link(f, dest / f.name)


def _link(src: Path, dest: Path) -> None:
    """``dest`` the same file as ``src``: a hard link (a copy across file systems), replaced atomically."""
    if dest.exists() and os.path.samefile(src, dest):
        return
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dest)


def make_bundle(cache_dir: Path, out: Path | None = None, images: Iterable[str] = ("tiny",),
                source: Path | None = None, progress: Progress | None = None) -> Path:
    """Make (or bring up to date) the bundle in ``out`` (default ``cache_dir/nested``); returns its path."""
    out = out or cache_dir / BUNDLE_DIR
    fetch_debs(cache_dir, out / "debs", progress)
    build_wheels(out / "wheels", source or source_root())
    build_site(out / "wheels", out / "site.tar")
    shutil.rmtree(out / "site", ignore_errors=True)  # an older bundle's unpacked copy
    link_images(cache_dir, out / "images", images)
    script = out / "install.sh"
    tmp = script.with_name(".install.sh.tmp")
    tmp.write_text(INSTALL_SH)
    tmp.chmod(0o755)
    os.replace(tmp, script)
    return out


def main(argv: list[str]) -> None:
    """``python -m corral.nested.bundle [OUT]``: make the bundle (in ``$CORRAL_CACHE/nested`` by default)."""
    settings = load_settings()
    out = make_bundle(settings.cache, Path(argv[0]) if argv else None)
    print(out)


if __name__ == "__main__":
    main(sys.argv[1:])
