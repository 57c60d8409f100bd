"""The export archive: one tar file holding a VM's files, with a checksum manifest written last.

Layout (documented in docs/explanation/export-format.md)::

    <member>...          every file of the export (spec, disk layers, machine states, the image), as named by
                         the exporter; plain relative names, regular files only
    manifest.json        the last member: {"format": FORMAT, "meta": {...}, "files": {name: {"size", "sha256"}}}

The manifest comes last because the checksums are known only once each file has been streamed into the archive
(nothing is staged twice on disk). Reading is the mirror image: every member is streamed to its place while being
hashed; only when the manifest has been read and every file matches its size and checksum, and no file is missing
or extra, does :func:`read` return. A member with an absolute name, ``..``, a link or a device is refused before
anything is written: an archive from elsewhere is untrusted input.

Compression is gzip at level 1: qcow2 layers hold mostly written data that compresses a little, and a faster level
keeps export I/O-bound.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from corral.errors import InvalidInput

FORMAT = "corral-export/1"
MANIFEST = "manifest.json"
_CHUNK = 1 << 20

#: (bytes done, bytes total): called as the archive is written or read.
ArchiveProgress = Callable[[int, int], None]


class ArchiveError(InvalidInput):
    """The archive is not a whole, unmodified Corral export."""


@dataclass(frozen=True)
class Member:
    """One file to put in the archive: its name inside the archive and where it is now."""

    name: str
    path: Path


def _check_name(name: str) -> str:
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or name == MANIFEST or str(p) != name:
        raise ArchiveError(f"archive member name {name!r} is not a plain relative path")
    return name


class _Hashing:
    """A file object that hashes (and counts) what is read through it."""

    def __init__(self, f: IO[bytes], tick: Callable[[int], None]) -> None:
        self.f, self.tick, self.h, self.n = f, tick, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.h.update(data)
        self.n += len(data)
        self.tick(len(data))
        return data


def write(dest: Path, members: Sequence[Member], meta: dict[str, Any],
          progress: ArchiveProgress | None = None) -> dict[str, Any]:
    """Write the archive to ``dest`` (through ``dest.partial``, renamed when whole); return the manifest.

    If this fails, ``dest`` is not created (or left as it was) and the partial file is removed.
    """
    names = [_check_name(m.name) for m in members]
    if len(set(names)) != len(names):
        raise ArchiveError("two archive members have the same name")
    total = sum(m.path.stat().st_size for m in members)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    files: dict[str, dict[str, Any]] = {}
    partial = dest.with_name(dest.name + ".partial")
    try:
        with tarfile.open(partial, "w:gz", compresslevel=1, format=tarfile.PAX_FORMAT) as tar:
            for m in members:
                info = tar.gettarinfo(str(m.path), arcname=m.name)
                if not info.isfile():
                    raise ArchiveError(f"{m.path} is not a regular file")
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(m.path, "rb") as f:
                    reader = _Hashing(f, tick)
                    tar.addfile(info, reader)  # type: ignore[arg-type]  # reads exactly info.size bytes
                if reader.n != info.size:
                    raise ArchiveError(f"{m.path} changed size while it was being archived")
                files[m.name] = {"size": info.size, "sha256": reader.h.hexdigest()}
            manifest = {"format": FORMAT, "meta": meta, "files": files}
            data = json.dumps(manifest, indent=2, sort_keys=True).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, _BytesReader(data))  # type: ignore[arg-type]
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, dest)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return manifest


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.pos + size
        out = self.data[self.pos:end]
        self.pos += len(out)
        return out


def read(src: Path, into: Path, progress: ArchiveProgress | None = None) -> dict[str, Any]:
    """Unpack ``src`` into the empty directory ``into`` and check it whole; return the manifest's ``meta``.

    Raises :class:`ArchiveError` naming the first problem: not an archive, an unsafe member, a file whose checksum
    or size differs from the manifest, a missing or unexpected file, no manifest. The caller removes ``into``.
    """
    total = src.stat().st_size
    seen: dict[str, dict[str, Any]] = {}
    manifest: dict[str, Any] | None = None
    try:
        tar = tarfile.open(src, "r:*")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, OSError) as exc:
        raise ArchiveError(f"{src} is not a Corral export archive ({exc})") from exc
    with tar:
        try:
            for info in tar:
                if manifest is not None:
                    raise ArchiveError(f"{src}: member {info.name!r} after the manifest")
                if not info.isfile():
                    raise ArchiveError(f"{src}: member {info.name!r} is not a regular file")
                f = tar.extractfile(info)
                assert f is not None
                if info.name == MANIFEST:
                    try:
                        manifest = json.loads(f.read(16 << 20))
                    except ValueError as exc:
                        raise ArchiveError(f"{src}: the manifest is not valid JSON ({exc})") from exc
                    continue
                name = _check_name(info.name)
                if name in seen:
                    raise ArchiveError(f"{src}: member {name!r} appears twice")
                out = into / name
                out.parent.mkdir(parents=True, exist_ok=True)
                h, n = hashlib.sha256(), 0
                with open(out, "wb") as w:
                    while data := f.read(_CHUNK):
                        h.update(data)
                        n += len(data)
                        w.write(data)
                seen[name] = {"size": n, "sha256": h.hexdigest()}
                if progress is not None:
                    progress(min(tar.fileobj.tell() if tar.fileobj else 0, total), total)
            # Read on to the end of the compressed stream, so gzip checks its CRC over the padding too.
            if tar.fileobj is not None:
                while tar.fileobj.read(_CHUNK):
                    pass
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ArchiveError(f"{src} is truncated or damaged ({exc})") from exc
    if manifest is None or manifest.get("format") != FORMAT:
        raise ArchiveError(f"{src} has no {FORMAT} manifest: it is not a whole Corral export")
    files = manifest.get("files") or {}
    for name, want in sorted(files.items()):
        got = seen.get(name)
        if got is None:
            raise ArchiveError(f"{src}: {name} is listed in the manifest but missing")
        if got != {"size": want.get("size"), "sha256": want.get("sha256")}:
            raise ArchiveError(f"{src}: {name} does not match its checksum in the manifest (damaged archive)")
    extra = sorted(set(seen) - set(files))
    if extra:
        raise ArchiveError(f"{src}: {extra[0]} is not listed in the manifest")
    meta = manifest.get("meta")
    if not isinstance(meta, dict):
        raise ArchiveError(f"{src}: the manifest has no meta section")
    return meta
