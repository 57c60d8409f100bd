"""The two tools that handle OCI images for Corral, both from Debian's archive (scripts/setup.sh installs them):

- **skopeo** copies any source (an OCI layout, a ``docker save``/``podman save`` tarball, an OCI archive, a
  registry) into a private OCI layout under the work directory. Every later step reads that copy, which nobody
  else can change, and skopeo checks each blob's digest on the way.
- **umoci** unpacks the layout's layers in order into a root filesystem, applying whiteouts (``.wh.NAME`` deletes
  NAME of a lower layer, ``.wh..wh..opq`` hides a directory's lower contents), and resolves the config's ``User``
  against the image's own ``/etc/passwd`` and ``/etc/group`` into the uid and gid of its runtime ``config.json``.

Both run with a time limit; their last line of error output is the one-line error a user sees.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from corral.errors import ImageError
from corral.images.oci.layout import Source

TAG = "corral"  # the tag of the one image in Corral's private copy
TIMEOUT = 1800.0
POLICY = Path("/etc/containers/policy.json")


def _run(argv: list[str], what: str) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except FileNotFoundError as exc:
        raise ImageError(f"{exc.filename} is not installed: run scripts/setup.sh (it installs skopeo and umoci)") \
            from None
    except subprocess.TimeoutExpired:
        raise ImageError(f"{what} took more than {TIMEOUT:.0f}s: refused") from None
    if r.returncode != 0:
        lines = [ln.strip() for ln in r.stderr.strip().splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"exit status {r.returncode}"
        if m := re.search(r'level=fatal msg="((?:[^"\\]|\\.)*)"', detail):  # skopeo logs through logrus
            detail = m.group(1).replace('\\"', '"')
        raise ImageError(f"{what} failed: {detail[:400]}")
    return r.stdout


def copy(source: Source, dest: Path) -> None:
    """Copy the image ``source`` names into a new OCI layout ``dest`` (tag :data:`TAG`), its blobs verified."""
    policy = ["--policy", str(POLICY)] if POLICY.is_file() else ["--insecure-policy"]  # local files need none
    # An OCI source keeps its digest (skopeo would otherwise compress its uncompressed layers, a new manifest); a
    # docker archive or a registry's docker-format image is converted to OCI, and keyed by the converted digest.
    keep = ["--preserve-digests"] if source.kind in ("layout", "oci-archive") else []
    _run(["skopeo", *policy, "copy", "--quiet", *keep, source.skopeo(), f"oci:{dest}:{TAG}"],
         f"reading the image {source}")


def unpack(layout: Path, bundle: Path) -> tuple[Path, int, int]:
    """Unpack the layout's image into ``bundle``: (its root filesystem, the main process's uid and gid).

    As root the files keep their owners; otherwise (``--rootless``) every file is the builder's, and the disk maker
    gives them to root."""
    rootless = ["--rootless"] if os.getuid() != 0 else []
    _run(["umoci", "unpack", *rootless, "--image", f"{layout}:{TAG}", str(bundle)], "unpacking the image's layers")
    try:
        user = json.loads((bundle / "config.json").read_text())["process"]["user"]
        uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ImageError(f"umoci wrote no readable runtime config: {exc}") from None
    rootfs = bundle / "rootfs"
    for f in bundle.iterdir():  # umoci's mtree and metadata are for repacking, which Corral does not do
        if f != rootfs:
            f.unlink() if f.is_file() else shutil.rmtree(f)
    return rootfs, uid, gid
