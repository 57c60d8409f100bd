"""What an OCI reference names, and what an OCI image layout says about the image in it.

Pure file and JSON work, no tools run: the reference a user gives (``DIR[:TAG]``, a tarball, ``docker://...``) is
classified here, and the layout Corral copied the image into (with skopeo, :mod:`corral.images.oci.tools`) is read
here: ``index.json`` -> the manifest of the chosen tag -> the image config, each blob checked against its sha256
digest before it is parsed. The config's ``Entrypoint``, ``Cmd``, ``Env``, ``WorkingDir`` and ``User`` become an
:class:`OciProcess`, the VM's main process.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from corral.errors import ImageError, InvalidInput, NotFound

INDEX_MEDIA = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
REF_NAME = "org.opencontainers.image.ref.name"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # what docker run sets without one
MAX_BLOB = 16 << 20  # a manifest or config larger than this is not one
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


class OciProcess(BaseModel):
    """The image's main process, from its config: kept in the image's manifest and on its disk."""

    entrypoint: list[str] = Field(default_factory=list)
    cmd: list[str] = Field(default_factory=list, description="the default arguments; `-- ARGS` at launch replace them")
    env: list[str] = Field(default_factory=list, description="KEY=VALUE, PATH added when the image sets none")
    workdir: str = "/"
    user: str = Field(default="", description="as the image config says (name, uid, name:group, uid:gid)")
    uid: int = 0
    gid: int = 0

    def argv(self, command: list[str] | None = None) -> list[str]:
        """Entrypoint + cmd, or entrypoint + ``command`` when one is given (as ``docker run IMAGE ARGS``)."""
        return [*self.entrypoint, *(self.cmd if command is None else command)]


@dataclass(frozen=True)
class Source:
    """A user's reference, classified: what skopeo reads it as."""

    kind: Literal["layout", "docker-archive", "oci-archive", "registry"]
    location: str  # an absolute path, or the registry reference without its scheme
    tag: str | None = None

    def skopeo(self) -> str:
        """The reference in skopeo's transport syntax."""
        if self.kind == "registry":
            return f"docker://{self.location}"
        if self.kind == "layout":
            return f"oci:{self.location}" + (f":{self.tag}" if self.tag else "")
        return f"{self.kind}:{self.location}"

    def __str__(self) -> str:
        return self.skopeo() if self.kind == "registry" else self.location + (f":{self.tag}" if self.tag else "")


def _tar_names(path: Path) -> set[str]:
    try:
        with tarfile.open(path) as t:
            return {m.name.removeprefix("./") for m in t.getmembers()[:10000]}
    except (tarfile.TarError, OSError) as exc:
        raise InvalidInput(f"{path} is not an OCI image: it is neither an OCI layout directory nor a tarball "
                           f"({exc})") from None


def classify(ref: str) -> Source:
    """``docker://REF`` or a registry name, an OCI layout ``DIR[:TAG]``, or a ``docker save``/``podman save``/OCI
    archive tarball. A path that names nothing is NotFound; a file that is no image is InvalidInput."""
    if not ref or any(ord(c) < 32 for c in ref):
        raise InvalidInput("--oci needs an image reference: DIR[:TAG], a docker-save tarball or docker://NAME")
    if ref.startswith("docker://"):
        return Source("registry", ref.removeprefix("docker://"))
    path, tag = Path(ref), None
    if not path.exists() and ":" in ref.rsplit("/", 1)[-1]:
        head, _, t = ref.rpartition(":")
        if Path(head).is_dir():
            path, tag = Path(head), t
    if path.exists():
        path = path.absolute()
        if path.is_dir():
            if not (path / "oci-layout").is_file() or not (path / "index.json").is_file():
                raise InvalidInput(f"{path} is not an OCI image layout (it has no oci-layout and index.json)")
            if tag is not None and not TAG_RE.match(tag):
                raise InvalidInput(f"{tag!r} is not a valid tag")
            return Source("layout", str(path), tag)
        if not path.is_file():
            raise InvalidInput(f"{path} is neither a directory nor a file")
        names = _tar_names(path)
        if "oci-layout" in names and "index.json" in names:
            return Source("oci-archive", str(path))
        if "manifest.json" in names:
            return Source("docker-archive", str(path))
        raise InvalidInput(f"{path} is a tarball but not an image: it has neither manifest.json (docker save) nor "
                           "oci-layout (an OCI archive)")
    if ref.startswith(("/", ".", "~")) or ref.endswith((".tar", ".tar.gz", ".tgz")):
        raise NotFound(f"no such file or directory: {ref}")
    return Source("registry", ref)


# -- reading a layout ------------------------------------------------------------------------------------------


def read_blob(layout: Path, digest: str) -> bytes:
    """A blob of the layout, refused unless its bytes have the digest that names it."""
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexd):
        raise ImageError(f"unsupported digest {digest!r} in the image: only sha256 is accepted")
    p = layout / "blobs" / "sha256" / hexd
    if not p.is_file():
        raise ImageError(f"the image lacks blob {digest}: the layout is incomplete")
    if p.stat().st_size > MAX_BLOB:
        raise ImageError(f"blob {digest} is too large for a manifest or config")
    data = p.read_bytes()
    if hashlib.sha256(data).hexdigest() != hexd:
        raise ImageError(f"blob {digest} does not match its digest: the image is damaged")
    return data


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ImageError(f"the image's {what} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ImageError(f"the image's {what} is not a JSON object")
    return doc


def tags(index: dict[str, Any]) -> list[str]:
    """The tags (``ref.name`` annotations) an ``index.json`` names."""
    return sorted({str(m.get("annotations", {}).get(REF_NAME)) for m in index.get("manifests", [])
                   if isinstance(m, dict) and m.get("annotations", {}).get(REF_NAME)})


def pick(index: dict[str, Any], tag: str | None, where: str) -> dict[str, Any]:
    """The descriptor of ``tag`` in an index; without a tag, the only image there is (or ``latest``)."""
    manifests = [m for m in index.get("manifests", []) if isinstance(m, dict)]
    if not manifests:
        raise ImageError(f"{where} holds no image (its index.json lists no manifests)")
    if tag is not None:
        found = [m for m in manifests if m.get("annotations", {}).get(REF_NAME) == tag]
        if not found:
            raise NotFound(f"{where} has no tag {tag!r} (tags: {', '.join(tags(index)) or 'none'})")
        return found[0]
    if len(manifests) == 1:
        return manifests[0]
    latest = [m for m in manifests if m.get("annotations", {}).get(REF_NAME) == "latest"]
    if latest:
        return latest[0]
    raise InvalidInput(f"{where} holds {len(manifests)} images: name one as DIR:TAG (tags: "
                       f"{', '.join(tags(index)) or 'none'})")


def _platform(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    for m in manifests:
        p = m.get("platform", {})
        if p.get("os", "linux") == "linux" and p.get("architecture") == "amd64":
            return m
    raise ImageError("the image index has no linux/amd64 image, the only architecture Corral runs OCI images on")


def resolve(layout: Path, tag: str | None = None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(manifest digest, manifest, config) of ``tag`` in the layout; an image index descends to linux/amd64."""
    index = _json((layout / "index.json").read_bytes(), "index.json")
    desc = pick(index, tag, "the image")
    for _ in range(2):  # an index in the index (a multi-platform image): one level down
        if desc.get("mediaType") not in INDEX_MEDIA:
            break
        desc = _platform(_json(read_blob(layout, str(desc.get("digest"))), "image index").get("manifests", []))
    digest = str(desc.get("digest"))
    manifest = _json(read_blob(layout, digest), "manifest")
    config_desc = manifest.get("config")
    if not isinstance(config_desc, dict):
        raise ImageError("the image's manifest names no config")
    config = _json(read_blob(layout, str(config_desc.get("digest"))), "config")
    return digest, manifest, config


def _strings(v: Any, what: str) -> list[str]:
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ImageError(f"the image config's {what} is not a list of strings")
    return list(v)


def process_of(config: dict[str, Any]) -> OciProcess:
    """The main process the image config describes (its ``config`` object; an image without one runs nothing)."""
    c = config.get("config") or {}
    if not isinstance(c, dict):
        raise ImageError("the image config's config is not an object")
    env = _strings(c.get("Env"), "Env")
    if any("=" not in e or any(ord(ch) < 32 for ch in e) for e in env):
        raise ImageError("the image config's Env has an entry that is not one line of KEY=VALUE")
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, f"PATH={DEFAULT_PATH}")
    workdir = c.get("WorkingDir") or "/"
    if not isinstance(workdir, str) or not workdir.startswith("/"):
        raise ImageError(f"the image config's WorkingDir {workdir!r} is not an absolute path")
    user = c.get("User") or ""
    if not isinstance(user, str):
        raise ImageError("the image config's User is not a string")
    return OciProcess(entrypoint=_strings(c.get("Entrypoint"), "Entrypoint"), cmd=_strings(c.get("Cmd"), "Cmd"),
                      env=env, workdir=workdir, user=user)
