"""The chunk file format and the pure arithmetic of chunks.

A disk is cut into fixed-size chunks of its guest-visible contents (``CHUNK_SIZE``, 4 MiB; the last one may be
shorter). A chunk is named by the SHA-256 of its plain bytes. An all-zero chunk is never stored: the index says
``null`` for it.

A stored chunk file is::

    magic     8 bytes   b"CRLCHNK1"
    digest   32 bytes   SHA-256 of the payload (the stored, compressed bytes)
    payload             one zstd frame (with zstd's own content checksum) of the plain chunk

so a flipped bit is found from the stored bytes alone (the payload digest), and the decompressed bytes are checked
again against the chunk's name before they are used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import zstandard

CHUNK_SIZE = 4 << 20
MAGIC = b"CRLCHNK1"
HEADER = len(MAGIC) + 32
ZSTD_LEVEL = 3
_ZERO = bytes(CHUNK_SIZE)


class ChunkError(Exception):
    """A stored chunk does not match its checksums (``reason`` says how)."""

    def __init__(self, digest: str, reason: str) -> None:
        super().__init__(f"chunk {digest[:16]}: {reason}")
        self.digest, self.reason = digest, reason


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_zero(data: bytes) -> bool:
    if len(data) == CHUNK_SIZE:
        return data == _ZERO
    return data == bytes(len(data))


def encode(data: bytes) -> bytes:
    """The stored file for ``data``: header (magic, payload digest) + zstd frame."""
    payload = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, write_content_size=True).compress(data)
    return MAGIC + hashlib.sha256(payload).digest() + payload


def decode(name: str, stored: bytes) -> bytes:
    """The plain chunk from its stored file; ChunkError if any checksum fails."""
    if len(stored) < HEADER or stored[: len(MAGIC)] != MAGIC:
        raise ChunkError(name, "bad header")
    payload = stored[HEADER:]
    if hashlib.sha256(payload).digest() != stored[len(MAGIC) : HEADER]:
        raise ChunkError(name, "stored bytes do not match their checksum")
    try:
        data = zstandard.ZstdDecompressor().decompress(payload, max_output_size=CHUNK_SIZE)
    except zstandard.ZstdError as exc:
        raise ChunkError(name, f"does not decompress: {exc}") from exc
    if digest(data) != name:
        raise ChunkError(name, "contents do not match the chunk's name")
    return data


def check_stored(name: str, stored: bytes) -> None:
    """Verify a stored chunk completely (both checksums)."""
    decode(name, stored)


def count(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    return (size + chunk_size - 1) // chunk_size


def chunk_length(i: int, size: int, chunk_size: int = CHUNK_SIZE) -> int:
    return min(chunk_size, size - i * chunk_size)


def touched(ranges: Iterable[tuple[int, int]], chunk_size: int = CHUNK_SIZE) -> Iterator[int]:
    """The chunk numbers that ``(start, length)`` ranges touch, ascending, each once."""
    seen: set[int] = set()
    for start, length in ranges:
        if length <= 0:
            continue
        seen.update(range(start // chunk_size, (start + length - 1) // chunk_size + 1))
    yield from sorted(seen)


def clip(ranges: Iterable[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """The parts of ``(start, length)`` ranges within [lo, hi), as (start, length)."""
    out = []
    for start, length in ranges:
        s, e = max(start, lo), min(start + length, hi)
        if s < e:
            out.append((s, e - s))
    return out


def regions(chunk_numbers: Iterable[int]) -> int:
    """How many runs of consecutive chunk numbers there are (the "changed regions" of a backup)."""
    n, last = 0, None
    for i in sorted(chunk_numbers):
        if last is None or i != last + 1:
            n += 1
        last = i
    return n
