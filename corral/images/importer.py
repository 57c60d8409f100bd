"""Images from outside: a qcow2 or raw disk image from a file, a URL or the catalog, into the store.

The image is untrusted, so the order matters:

1. the bytes are copied (or downloaded, with a size limit) into a private work directory under the store, hashed
   on the way: later steps read that copy, which nobody else can change;
2. ``--sha256`` (or the catalog's checksum file) is verified;
3. our own header check (:mod:`corral.images.inspect`) refuses backing files, external data files, ``json:``
   names, images of two formats, and every format but qcow2 and raw, before any qemu-img opens the file;
4. qemu-img runs only with the format stated (``-f``), under resource limits (``prlimit``: CPU seconds and address
   space), to ``check`` a qcow2 and ``convert`` into a fresh, self-contained qcow2;
5. the converted disk and its manifest (``boot=disk``: no kernel, the disk boots itself) are installed with the
   store's all-or-nothing rename. Any failure removes the work directory: nothing is left behind.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from corral import paths
from corral.errors import Conflict, ImageError, InvalidInput, NotFound, VerificationError
from corral.images import catalog
from corral.images.artifacts import Manifest, Progress, sha256_file
from corral.images.builders import BUILDERS
from corral.images.inspect import Format, check_name, guess_format, inspect
from corral.images.store import ImageStore

MAX_DOWNLOAD = 64 << 30  # bytes: a cloud image is a few hundred MB; anything this large is refused
MAX_SUMS_FILE = 1 << 20
QEMU_IMG_CPU_SECONDS = 900  # convert of a multi-GB image under load; check and info need far less
QEMU_IMG_ADDRESS_SPACE = 2 << 30
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")  # the VM spec's image name
_CHUNK = 1 << 20


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def url_file_name(url: str) -> str:
    """The file name a URL's path ends with (query and fragment dropped); ``image`` when it names none
    (``http://host/``, ``.../..``): the name is used inside the work directory, so it is never empty or a dot."""
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    return "image" if name in ("", ".", "..") else name


def limited(argv: list[str], cpu: int = QEMU_IMG_CPU_SECONDS, address_space: int = QEMU_IMG_ADDRESS_SPACE) -> list[str]:
    """``argv`` run under prlimit: a CPU-time and an address-space limit (a hostile image cannot spin or balloon)."""
    return ["prlimit", f"--cpu={cpu}", f"--as={address_space}", "--", *argv]


def _run_qemu_img(args: list[str], what: str, cpu: int = 60) -> str:
    try:
        r = subprocess.run(limited(["qemu-img", *args], cpu=cpu), capture_output=True, text=True, timeout=3600,
                           check=False)
    except FileNotFoundError as exc:
        raise ImageError(f"{exc.filename} not found: install qemu-utils and util-linux") from exc
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"qemu-img {what} took more than an hour: refused") from exc
    if r.returncode != 0:
        detail = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        raise ImageError(f"qemu-img {what} failed: {detail[:300]}")
    return r.stdout


class _Hasher:
    def __init__(self) -> None:
        self.sha256, self.sha512, self.size = hashlib.sha256(), hashlib.sha512(), 0

    def update(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        self.sha512.update(chunk)
        self.size += len(chunk)

    def digest(self, algo: str) -> str:
        return (self.sha256 if algo == "sha256" else self.sha512).hexdigest()


def _copy_local(src: Path, dest: Path, progress: Progress | None) -> _Hasher:
    if not src.is_absolute():
        raise InvalidInput(f"image path {str(src)!r} must be absolute")
    if not src.is_file():
        raise NotFound(f"no image file {src}")
    h = _Hasher()
    total = src.stat().st_size
    with open(src, "rb") as f, open(dest, "xb") as out:
        while chunk := f.read(_CHUNK):
            out.write(chunk)
            h.update(chunk)
            if progress:
                progress(f"copy {src.name}", h.size, total)
    return h


def download(url: str, dest: Path | None, progress: Progress | None,
             limit: int = MAX_DOWNLOAD) -> tuple[_Hasher, bytes]:
    """Stream ``url`` into ``dest`` (or into memory when ``dest`` is None), hashing, refusing more than ``limit``."""
    import httpx

    h, kept = _Hasher(), bytearray()
    name = url.rsplit("/", 1)[-1] or url
    try:
        with httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0, read=120.0)) as c, \
                c.stream("GET", url) as r:
            if r.status_code != 200:
                raise ImageError(f"download of {url} failed: HTTP {r.status_code}")
            total = int(r.headers.get("content-length") or 0) or None
            if total is not None and total > limit:
                raise ImageError(f"{url} is {total} bytes, more than the limit of {limit}: refused")
            out = open(dest, "xb") if dest is not None else None  # noqa: SIM115
            try:
                for chunk in r.iter_bytes(_CHUNK):
                    h.update(chunk)
                    if h.size > limit:
                        raise ImageError(f"{url} is larger than the limit of {limit} bytes: refused")
                    if out is not None:
                        out.write(chunk)
                    else:
                        kept += chunk
                    if progress:
                        progress(f"download {name}", h.size, total)
            finally:
                if out is not None:
                    out.close()
    except httpx.HTTPError as exc:
        raise ImageError(f"download of {url} failed: {exc}") from exc
    return h, bytes(kept)


def _check_target(store: ImageStore, name: str) -> None:
    if not NAME_RE.match(name):
        raise InvalidInput(f"{name!r} is not a valid image name: use lower-case letters, digits, '.', '_' and '-'")
    if name in BUILDERS:
        raise Conflict(f"'{name}' is the name of a built image: import under another --name")
    if (store.dir(name) / paths.IMAGE_MANIFEST).exists():
        raise Conflict(f"image '{name}' is already installed: remove it first (corral images rm {name})")


def import_image(
    store: ImageStore, source: str, name: str | None = None, sha256: str | None = None,
    fmt: Format | None = None, firmware: Literal["bios", "uefi"] = "bios", progress: Progress | None = None,
    max_download: int = MAX_DOWNLOAD,
) -> Manifest:
    """Import ``source`` (an absolute file path, an http(s) URL or a catalog name) as image ``name``."""
    check_name(source)
    entry = None if is_url(source) or source.startswith("/") else catalog.lookup(source)
    if entry is None and not is_url(source) and not source.startswith("/"):
        raise NotFound(f"'{source}' is neither a file path, a URL nor a catalog image "
                       f"({', '.join(sorted(catalog.CATALOG))})")
    name = name or (entry.name if entry else None)
    if not name:
        raise InvalidInput("an imported image needs a name: pass --name NAME")
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise InvalidInput("--sha256 must be 64 hexadecimal digits")
    if fmt is not None and fmt not in ("qcow2", "raw"):
        raise InvalidInput(f"format {fmt!r} is not supported: only qcow2 and raw images can be imported")
    _check_target(store, name)
    store.images_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=store.images_dir, prefix=f".import-{name}-"))
    try:
        src = work / "source"
        if entry is not None:
            h, _ = download(entry.url, src, progress, max_download)
            _, sums = download(entry.sums_url, None, None, MAX_SUMS_FILE)
            want = catalog.digest_from_sums(sums.decode(errors="replace"), entry.file_name, entry.sums_algo)
            if h.digest(entry.sums_algo) != want:
                raise VerificationError(f"{entry.file_name} does not match its {entry.sums_algo.upper()} in "
                                        f"{entry.sums_url}: refused")
            fmt, firmware, file_name = fmt or entry.format, entry.firmware, entry.file_name
        elif is_url(source):
            h, _ = download(source, src, progress, max_download)
            file_name = url_file_name(source)
        else:
            h = _copy_local(Path(source), src, progress)
            file_name = Path(source).name
        if sha256 is not None and h.digest("sha256") != sha256:
            raise VerificationError(f"{file_name} has SHA256 {h.digest('sha256')}, not {sha256}: refused")
        named = work / file_name  # the header check reports the user's file name
        src.rename(named)
        fmt = fmt or guess_format(named)
        inspect(named, fmt)
        if progress:
            progress("check image", 0, None)
        if fmt == "qcow2":
            _run_qemu_img(["check", "-f", "qcow2", str(named)], "check")
        out = work / "out"
        out.mkdir()
        disk = out / paths.IMAGE_DISK
        if progress:
            progress("convert to qcow2", 0, None)
        _run_qemu_img(["convert", "-f", fmt, "-O", "qcow2", "-o", "compat=1.1", str(named), str(disk)], "convert",
                      cpu=QEMU_IMG_CPU_SECONDS)
        named.unlink()
        inspect(disk, "qcow2")  # what we made is self-contained too
        info = json.loads(_run_qemu_img(["info", "--output=json", "-f", "qcow2", str(disk)], "info"))
        manifest = Manifest(
            name=name, disk_format="qcow2", disk_sha256=sha256_file(disk), disk_virtual_size=int(info["virtual-size"]),
            size=disk.stat().st_size, build_date=datetime.now(UTC).replace(microsecond=0).isoformat(),
            builder="import", boot="disk", firmware=firmware, source=source, source_sha256=h.digest("sha256"),
        )
        disk.chmod(0o444)
        (out / paths.IMAGE_MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
        (out / paths.IMAGE_MANIFEST).chmod(0o444)
        if progress:
            progress(f"install image {name}", 0, None)
        _check_target(store, name)  # still free: another import of the same name may have finished meanwhile
        return store.install_from(out, name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
