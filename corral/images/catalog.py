"""Named cloud images from their publishers, with the checksum files that vouch for them.

``corral images import debian-13-cloud`` downloads the image and its checksum file (over HTTPS, from the same
publisher) and refuses the image unless its digest is listed there for its file name. The image then goes through
the same header check and conversion as any other import (:mod:`corral.images.importer`).

Debian publishes ``SHA512SUMS`` for its cloud images, Ubuntu ``SHA256SUMS``: each entry says which.

``CORRAL_IMAGE_CATALOG_URL`` (read by the daemon) replaces every entry's scheme and host with another base URL,
keeping the path: for a local mirror, and for the tests, which serve images from 127.0.0.1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from corral.errors import VerificationError

CATALOG_URL_ENV = "CORRAL_IMAGE_CATALOG_URL"


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    url: str
    sums_url: str
    sums_algo: Literal["sha256", "sha512"]
    format: Literal["qcow2", "raw"] = "qcow2"
    firmware: Literal["bios", "uefi"] = "bios"
    description: str = ""

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


CATALOG: dict[str, CatalogEntry] = {e.name: e for e in (
    CatalogEntry(
        "debian-12-cloud",
        "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
        "https://cloud.debian.org/images/cloud/bookworm/latest/SHA512SUMS", "sha512",
        description="Debian 12 (bookworm) genericcloud, cloud-init",
    ),
    CatalogEntry(
        "debian-13-cloud",
        "https://cloud.debian.org/images/cloud/trixie/latest/debian-13-genericcloud-amd64.qcow2",
        "https://cloud.debian.org/images/cloud/trixie/latest/SHA512SUMS", "sha512",
        description="Debian 13 (trixie) genericcloud, cloud-init",
    ),
    CatalogEntry(
        "ubuntu-24.04-cloud",
        # .img, but a qcow2 image: the format is stated here, and checked against the header
        "https://cloud-images.ubuntu.com/releases/noble/release/ubuntu-24.04-server-cloudimg-amd64.img",
        "https://cloud-images.ubuntu.com/releases/noble/release/SHA256SUMS", "sha256",
        description="Ubuntu 24.04 LTS (noble) server cloud image, cloud-init",
    ),
)}


def _rebase(url: str, base: str | None) -> str:
    if not base:
        return url
    parts = urlsplit(url)
    return base.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def lookup(name: str, base: str | None = None) -> CatalogEntry | None:
    """The catalog entry ``name`` (URLs rebased on ``base`` or ``$CORRAL_IMAGE_CATALOG_URL``), or None."""
    e = CATALOG.get(name)
    if e is None:
        return None
    base = base if base is not None else os.environ.get(CATALOG_URL_ENV)
    return CatalogEntry(e.name, _rebase(e.url, base), _rebase(e.sums_url, base), e.sums_algo, e.format, e.firmware,
                        e.description)


def digest_from_sums(text: str, file_name: str, algo: str) -> str:
    """The digest a ``SHA256SUMS``/``SHA512SUMS`` file lists for ``file_name`` (``HEX  NAME`` or ``HEX *NAME``)."""
    want = {"sha256": 64, "sha512": 128}[algo]
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) != 2:
            continue
        digest, name = parts[0].lower(), parts[1].strip().lstrip("*").removeprefix("./")
        if name == file_name and len(digest) == want and all(c in "0123456789abcdef" for c in digest):
            return digest
    raise VerificationError(f"the {algo.upper()}SUMS file lists no checksum for {file_name}: refused")
