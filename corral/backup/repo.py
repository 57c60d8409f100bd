"""A backup repository on disk (the format: docs/explanation/backup-format.md).

::

    DIR/corral-backup.json     the marker: format, version, chunk size, compression, created
    DIR/lock                   flock: writers (create, prune) take it exclusively, readers (verify, restore) shared
    DIR/chunks/ab/abcdef...    one file per chunk, named by the SHA-256 of its plain bytes (see chunks.py)
    DIR/indexes/<id>.json      one index per backup (models.BackupIndex), written whole or not at all
    DIR/tmp/                   files being written; anything here after a crash is garbage

Every file is written to a temporary name, flushed to disk and renamed: a crash leaves either the old state or the
new one, never a half file under a real name. Chunks are written before the index that refers to them.

Blocking: every method does file I/O and hashing; the service calls them in threads.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from corral.backup import chunks
from corral.backup.models import BackupIndex, ChunkProblem, RepoInfo, VerifyReport
from corral.errors import CorralError, InvalidInput, NotFound
from corral.fileio import fsync_dir

MARKER = "corral-backup.json"
FORMAT = "corral-backup"
VERSION = 1
LOCK_TIMEOUT = 3600.0
_ID = re.compile(r"^[0-9a-f]{1,32}$")

Progress = Callable[[str, int, int | None], None]


class RepositoryError(CorralError):
    """The repository is missing, is not a repository, or stayed locked too long."""


class CorruptBackup(RepositoryError):
    """A chunk or an index failed its checksum, or is missing."""


def _write_atomic(path: Path, data: bytes, tmp_dir: Path) -> None:
    tmp = tmp_dir / f"{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Repository:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.chunks_dir = path / "chunks"
        self.indexes_dir = path / "indexes"
        self.tmp_dir = path / "tmp"

    # ---------------------------------------------------------------------------------------------- open --
    @classmethod
    def init(cls, path: Path) -> Repository:
        """Make a new, empty repository at ``path`` (an empty or missing directory)."""
        path = path.expanduser().absolute()
        if (path / MARKER).exists():
            raise InvalidInput(f"{path} is already a backup repository")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise InvalidInput(f"{path} exists and is not an empty directory: choose a new or empty one")
        created_dir = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            repo = cls(path)
            for d in (repo.chunks_dir, repo.indexes_dir, repo.tmp_dir):
                d.mkdir(exist_ok=True)
            (path / "lock").touch()
            marker = {"format": FORMAT, "version": VERSION, "chunk_size": chunks.CHUNK_SIZE, "compression": "zstd",
                      "hash": "sha256", "created": datetime.now(UTC).isoformat()}
            _write_atomic(path / MARKER, json.dumps(marker, indent=2).encode() + b"\n", repo.tmp_dir)
        except OSError as exc:
            if created_dir:
                import shutil

                shutil.rmtree(path, ignore_errors=True)
            raise RepositoryError(f"cannot make a backup repository at {path}: {exc.strerror or exc}") from exc
        return repo

    @classmethod
    def open(cls, path: Path) -> Repository:
        path = path.expanduser().absolute()
        marker = path / MARKER
        if not marker.is_file():
            if path.exists():
                raise RepositoryError(f"{path} is not a backup repository (no {MARKER}): "
                                      f"`corral backup repo init DIR` makes one")
            raise NotFound(f"no backup repository at {path}: make one with `corral backup repo init {path}`")
        try:
            meta = json.loads(marker.read_text())
        except (OSError, ValueError) as exc:
            raise RepositoryError(f"cannot read {marker}: {exc}") from exc
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise RepositoryError(f"{path}: unsupported repository format {meta.get('format')} "
                                  f"version {meta.get('version')}")
        if meta.get("chunk_size") != chunks.CHUNK_SIZE:
            raise RepositoryError(f"{path}: chunk size {meta.get('chunk_size')} is not supported")
        repo = cls(path)
        repo.tmp_dir.mkdir(exist_ok=True)
        return repo

    def created(self) -> datetime:
        return datetime.fromisoformat(json.loads((self.path / MARKER).read_text())["created"])

    # ---------------------------------------------------------------------------------------------- lock --
    @contextlib.contextmanager
    def lock(self, exclusive: bool, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        """Hold the repository lock (flock: released by the kernel if the holder dies, so never stale)."""
        f: IO[bytes] = open(self.path / "lock", "ab")  # noqa: SIM115 - held for the block
        try:
            deadline = time.monotonic() + timeout
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            while True:
                try:
                    fcntl.flock(f, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise RepositoryError(f"backup repository {self.path} is busy (another backup or prune "
                                              f"holds it for over {timeout:.0f}s): try again later") from None
                    time.sleep(0.2)
            yield
        finally:
            f.close()

    # -------------------------------------------------------------------------------------------- chunks --
    def chunk_path(self, name: str) -> Path:
        return self.chunks_dir / name[:2] / name

    def has_chunk(self, name: str) -> bool:
        return self.chunk_path(name).is_file()

    def put_chunk(self, data: bytes) -> tuple[str, int]:
        """Store ``data`` (not all zero) unless a chunk of that name exists: (its name, bytes newly stored)."""
        name = chunks.digest(data)
        path = self.chunk_path(name)
        if path.is_file():
            return name, 0
        path.parent.mkdir(exist_ok=True)
        stored = chunks.encode(data)
        _write_atomic(path, stored, self.tmp_dir)
        return name, len(stored)

    def get_chunk(self, name: str) -> bytes:
        """The plain chunk, checked; CorruptBackup if missing or damaged."""
        try:
            stored = self.chunk_path(name).read_bytes()
        except FileNotFoundError:
            raise CorruptBackup(f"chunk {name[:16]} is missing") from None
        try:
            return chunks.decode(name, stored)
        except chunks.ChunkError as exc:
            raise CorruptBackup(f"chunk {name[:16]} is corrupted ({exc.reason})") from exc

    def all_chunks(self) -> dict[str, int]:
        """Every stored chunk: name -> stored size."""
        out: dict[str, int] = {}
        if not self.chunks_dir.is_dir():
            return out
        for sub in self.chunks_dir.iterdir():
            if sub.is_dir():
                for f in sub.iterdir():
                    if len(f.name) == 64:
                        out[f.name] = f.stat().st_size
        return out

    # ------------------------------------------------------------------------------------------- indexes --
    def new_id(self) -> str:
        while True:
            bid = secrets.token_hex(4)
            if not (self.indexes_dir / f"{bid}.json").exists():
                return bid

    def write_index(self, index: BackupIndex) -> None:
        """Written whole or not at all, after every chunk it names (those are already renamed into place)."""
        for sub in self.chunks_dir.iterdir():
            if sub.is_dir():
                fsync_dir(sub)
        _write_atomic(self.indexes_dir / f"{index.id}.json", index.model_dump_json(indent=1).encode() + b"\n",
                      self.tmp_dir)
        fsync_dir(self.indexes_dir)

    def load_index(self, bid: str) -> BackupIndex:
        path = self.indexes_dir / f"{bid}.json"
        try:
            return BackupIndex.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise NotFound(f"no backup '{bid}' in {self.path}: see `corral backup ls`") from None
        except ValueError as exc:
            raise CorruptBackup(f"the index of backup '{bid}' is damaged: {str(exc).splitlines()[0]}") from exc

    def indexes(self) -> list[BackupIndex]:
        """Every readable index, oldest first (a damaged index is skipped here; verify reports it)."""
        out = []
        for f in self.indexes_dir.glob("*.json"):
            with contextlib.suppress(CorralError):
                out.append(self.load_index(f.stem))
        return sorted(out, key=lambda i: (i.created, i.id))

    def index_ids(self) -> list[str]:
        return sorted(f.stem for f in self.indexes_dir.glob("*.json"))

    def resolve(self, prefix: str) -> str:
        """The backup id that ``prefix`` (a unique beginning of it) names."""
        if not _ID.match(prefix):
            raise InvalidInput(f"{prefix!r} is not a backup id: give its hex id (or a unique prefix) from "
                               "`corral backup ls`")
        found = [i for i in self.index_ids() if i.startswith(prefix)]
        if not found:
            raise NotFound(f"no backup '{prefix}' in {self.path}: see `corral backup ls`")
        if len(found) > 1:
            raise InvalidInput(f"backup id prefix '{prefix}' is ambiguous ({', '.join(found[:5])}): give more of it")
        return found[0]

    def delete_index(self, bid: str) -> None:
        (self.indexes_dir / f"{bid}.json").unlink(missing_ok=True)

    # -------------------------------------------------------------------------------------------- verify --
    def verify(self, ids: list[str] | None, progress: Progress | None = None) -> VerifyReport:
        """Read every chunk the backups ``ids`` (None: all) refer to, once, and check both its checksums."""
        bids = ids or self.index_ids()
        users: dict[str, list[str]] = {}
        problems: list[ChunkProblem] = []
        bad: set[str] = set()
        for bid in bids:
            try:
                idx = self.load_index(bid)
            except CorruptBackup as exc:
                problems.append(ChunkProblem(chunk="", problem=exc.message, backups=[bid]))
                bad.add(bid)
                continue
            for name in idx.chunks:
                if name is not None:
                    users.setdefault(name, []).append(bid)
        total_bytes = 0
        for n, (name, who) in enumerate(sorted(users.items())):
            try:
                stored = self.chunk_path(name).read_bytes()
                total_bytes += len(stored)
                chunks.check_stored(name, stored)
            except FileNotFoundError:
                problems.append(ChunkProblem(chunk=name, problem="missing", backups=sorted(set(who))))
                bad.update(who)
            except chunks.ChunkError as exc:
                problems.append(ChunkProblem(chunk=name, problem=exc.reason, backups=sorted(set(who))))
                bad.update(who)
            if progress is not None:
                progress("verify", n + 1, len(users))
        return VerifyReport(backups=bids, chunks=len(users), bytes=total_bytes, problems=problems,
                            bad_backups=sorted(bad))

    # ------------------------------------------------------------------------------------------------ gc --
    def unreferenced(self) -> dict[str, int]:
        """Stored chunks that no index refers to: name -> stored size. Refuses if an index cannot be read."""
        used: set[str] = set()
        for bid in self.index_ids():
            used.update(c for c in self.load_index(bid).chunks if c is not None)
        return {n: s for n, s in self.all_chunks().items() if n not in used}

    def remove_chunks(self, names: list[str]) -> None:
        for name in names:
            self.chunk_path(name).unlink(missing_ok=True)
        for f in self.tmp_dir.iterdir():  # left by a writer that died (we hold the exclusive lock)
            f.unlink(missing_ok=True)

    def info(self) -> RepoInfo:
        stored = self.all_chunks()
        return RepoInfo(path=str(self.path), created=self.created(), chunk_size=chunks.CHUNK_SIZE,
                        backups=len(self.index_ids()), chunks=len(stored), bytes=sum(stored.values()))
