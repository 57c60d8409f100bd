"""A test OCI image made by hand, no Dockerfile and no container engine: Python's tarfile and json, real sha256
digests, the files of an OCI image layout (``oci-layout``, ``index.json``, a manifest, a config, two layers), and
the same image as a ``docker save`` tarball (``manifest.json`` + the layer tars + the config).

Layer 1 is a small root: Debian's static busybox (from the archive, as the tiny image gets it) with a few applet
links, a user ``app`` (uid 1000), ``/data/old.txt``, ``/data/keep.txt`` and ``/opt/dir/a``. Layer 2 deletes
``/data/old.txt`` (a ``.wh.`` whiteout), hides what layer 1 put in ``/opt/dir`` (an opaque whiteout) and adds
``/data/new.txt``, ``/opt/dir/b`` and the entrypoint script.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from corral.images.archive import DebianArchive

APPLETS = ("sh", "echo", "cat", "id", "pwd", "ls", "sleep", "touch", "test", "[")
ENTRY = """#!/bin/sh
echo "args: $*"
echo "user: $(id -u):$(id -g)"
echo "cwd: $(pwd)"
echo "greeting: $GREETING"
[ -e /data/old.txt ] && echo "old: present" || echo "old: absent"
echo "new: $(cat /data/new.txt)"
echo "opaque: $(ls /opt/dir | tr '\\n' ' ')"
if [ "$1" = wait ]; then  # until corral stop: the power button sends SIGTERM
    trap 'echo "term: seen"; exit 7' TERM
    while :; do sleep 0.2; done
fi
exit 7
"""
CONFIG = {"Entrypoint": ["/bin/sh", "/entry.sh"], "Cmd": ["default", "cmd"],
          "Env": ["PATH=/bin", "GREETING=hello oci"], "WorkingDir": "/home/app", "User": "app"}


def busybox(cache_dir: Path, mirror: str = "https://deb.debian.org/debian") -> bytes:
    """Debian's static busybox binary (the package the tiny image uses; cached downloads are reused)."""
    archive = DebianArchive(mirror, "bookworm", cache_dir)
    deb = archive.download(archive.package("busybox-static"))
    out = cache_dir / "tmp" / "oci-test-busybox"
    archive.extract(deb, out)
    return (out / "bin" / "busybox").read_bytes()


def _tar(entries: list[tuple[str, bytes | str | None, int]]) -> bytes:
    """A layer: (path, file bytes | symlink target (str) | None for a directory, mode)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for path, data, mode in entries:
            info = tarfile.TarInfo(path)
            info.mode, info.mtime = mode, 1700000000
            if data is None:
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def layers(bb: bytes) -> tuple[bytes, bytes]:
    one: list[tuple[str, bytes | str | None, int]] = [
        ("bin", None, 0o755), ("bin/busybox", bb, 0o755),
        *((f"bin/{a}", "busybox", 0o777) for a in APPLETS),
        ("etc", None, 0o755),
        ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n", 0o644),
        ("etc/group", b"root:x:0:\napp:x:1000:\n", 0o644),
        ("data", None, 0o755), ("data/old.txt", b"old\n", 0o644), ("data/keep.txt", b"keep\n", 0o644),
        ("opt", None, 0o755), ("opt/dir", None, 0o755), ("opt/dir/a", b"a\n", 0o644),
    ]
    two: list[tuple[str, bytes | str | None, int]] = [
        ("data", None, 0o755), ("data/.wh.old.txt", b"", 0o644), ("data/new.txt", b"from layer 2\n", 0o644),
        ("opt/dir", None, 0o755), ("opt/dir/.wh..wh..opq", b"", 0o644), ("opt/dir/b", b"b\n", 0o644),
        ("entry.sh", ENTRY.encode(), 0o755), ("home", None, 0o755), ("home/app", None, 0o755),
    ]
    return _tar(one), _tar(two)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_blob(diff_ids: list[str], config: dict[str, object] | None = None) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "config": config or CONFIG,
                       "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()


def make_layout(dest: Path, bb: bytes, tag: str = "v1") -> str:
    """An OCI image layout in ``dest`` with one image tagged ``tag``; returns its manifest digest."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        d = _digest(data)
        (blobs / d.removeprefix("sha256:")).write_bytes(data)
        return d

    l1, l2 = layers(bb)
    config = config_blob([_digest(l1), _digest(l2)])
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": put(layer), "size": len(layer)}
                   for layer in (l1, l2)],
    }).encode()
    digest = put(manifest)
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return digest


def make_docker_archive(dest: Path, bb: bytes, config: dict[str, object]) -> None:
    """What ``docker save`` writes: ``manifest.json`` naming the config and the layer tars, all in one tarball."""
    l1, l2 = layers(bb)
    cfg = config_blob([_digest(l1), _digest(l2)], config)
    files = {"layer1/layer.tar": l1, "layer2/layer.tar": l2,
             f"{hashlib.sha256(cfg).hexdigest()}.json": cfg}
    files["manifest.json"] = json.dumps([{"Config": f"{hashlib.sha256(cfg).hexdigest()}.json",
                                          "RepoTags": ["corral-test:latest"],
                                          "Layers": ["layer1/layer.tar", "layer2/layer.tar"]}]).encode()
    with tarfile.open(dest, "w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1700000000
            t.addfile(info, io.BytesIO(data))
