"""A small, verifying client for a Debian package archive.

Why not apt or python-debian: image builds must run as an unprivileged library call with no host apt state, and
every byte that ends up in a guest must be traceable to Debian's signed ``InRelease``. The chain of trust is:
``gpgv`` checks ``InRelease`` against the Debian keyring -> ``InRelease`` gives the sha256 of ``Packages.xz`` ->
``Packages`` gives the sha256 of every ``.deb``. Nothing unverified is ever parsed or extracted.
"""

from __future__ import annotations

import lzma
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from corral.errors import ImageError, NotFound, VerificationError
from corral.images.artifacts import Progress, sha256_file  # noqa: E402 - re-exported for the builders

DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Package:
    """One binary package as the verified index describes it."""

    name: str
    version: str
    arch: str
    filename: str  # path relative to the mirror root, e.g. pool/main/b/busybox/busybox-static_..._amd64.deb
    size: int
    sha256: str
    depends: str = ""  # raw Depends + Pre-Depends, comma separated
    provides: tuple[str, ...] = field(default_factory=tuple)


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """Parse deb822 paragraphs (Packages, InRelease body) into dicts; continuation lines keep their newline."""
    stanzas: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    key: str | None = None
    for line in text.splitlines():
        if not line.strip():
            if cur:
                stanzas.append(cur)
            cur, key = {}, None
            continue
        if line[0] in " \t":
            if key is not None:
                cur[key] += "\n" + line.strip()
            continue
        k, sep, v = line.partition(":")
        if not sep:
            continue
        key = k.strip()
        cur[key] = v.strip()
    if cur:
        stanzas.append(cur)
    return stanzas


def parse_relation(field_value: str) -> list[list[str]]:
    """``a (>= 1) | b:any, c [amd64]`` -> ``[["a", "b"], ["c"]]``: names only, version and arch qualifiers dropped."""
    groups: list[list[str]] = []
    for clause in field_value.split(","):
        clause = clause.strip()
        if not clause:
            continue
        alts = []
        for alt in clause.split("|"):
            alt = re.sub(r"\(.*?\)|\[.*?\]|<.*?>", "", alt).strip()
            name = alt.split(":")[0].strip()
            if name:
                alts.append(name)
        if alts:
            groups.append(alts)
    return groups


def packages_from_index(text: str, every: dict[str, list[Package]] | None = None) -> dict[str, Package]:
    """Build the name -> Package map from a Packages file (the last stanza of a name wins).

    ``every``, if given, also receives every version of each name (a suite may hold two uploads of one package, and
    a builder that needs an exact version, such as kernel headers matching a kernel, asks for it by version).
    """
    out: dict[str, Package] = {}
    for st in parse_stanzas(text):
        try:
            deps = ", ".join(x for x in (st.get("Pre-Depends", ""), st.get("Depends", "")) if x)
            provides = tuple(a[0] for a in parse_relation(st.get("Provides", "")))
            pkg = out[st["Package"]] = Package(
                name=st["Package"],
                version=st["Version"],
                arch=st.get("Architecture", ""),
                filename=st["Filename"],
                size=int(st["Size"]),
                sha256=st["SHA256"],
                depends=deps,
                provides=provides,
            )
            if every is not None:
                every.setdefault(pkg.name, []).append(pkg)
        except KeyError:
            continue  # a stanza without a checksum cannot be trusted, so it cannot be installed
    return out


def resolve_closure(index: dict[str, Package], names: Iterable[str], installed: Iterable[str] = ()) -> list[Package]:
    """Depends/Pre-Depends closure: first satisfiable alternative, versions ignored, virtual names via Provides.
    ``installed``: names a target system already has; they (and what they provide) satisfy a dependency and are
    not returned (what to add to a built image).

    Good enough to assemble a guest from a consistent suite: the archive is self-consistent, so the newest version
    of each name satisfies its reverse dependencies. Order: each package appears after the ones that pulled it in.
    """
    providers: dict[str, list[str]] = {}
    for pkg in index.values():
        for virt in pkg.provides:
            providers.setdefault(virt, []).append(pkg.name)

    chosen: dict[str, Package] = {}
    have = {n for n in installed if n in index}
    for n in have:
        chosen[n] = index[n]

    def pick(alts: list[str]) -> str | None:
        for alt in alts:  # an alternative already chosen satisfies the group at no cost
            if alt in chosen or any(p in chosen for p in providers.get(alt, [])):
                return None
        for alt in alts:
            if alt in index:
                return alt
            if alt in providers:
                return min(providers[alt])
        raise NotFound(f"no package in the index satisfies '{' | '.join(alts)}': check the suite and architecture")

    queue: list[str] = []
    for name in names:
        target = pick([name])
        if target:
            queue.append(target)
    while queue:
        name = queue.pop(0)
        if name in chosen:
            continue
        pkg = index[name]
        chosen[name] = pkg
        for group in parse_relation(pkg.depends):
            target = pick(group)
            if target and target not in chosen:
                queue.append(target)
    return [p for p in chosen.values() if p.name not in have]


class DebianArchive:
    """One suite of one mirror, for one architecture, with a local cache of verified files."""

    def __init__(
        self,
        mirror: str,
        suite: str,
        cache_dir: Path,
        keyring: Path = DEFAULT_KEYRING,
        arch: str = "amd64",
        component: str = "main",
    ) -> None:
        self.mirror = mirror.rstrip("/")
        self.suite = suite
        self.cache_dir = Path(cache_dir)
        self.keyring = Path(keyring)
        self.arch = arch
        self.component = component
        self._index: dict[str, Package] | None = None
        self._every: dict[str, list[Package]] = {}

    # -- transport -------------------------------------------------------------------------------------------

    def _fetch(self, url_path: str, dest: Path, progress: Progress | None, total: int | None = None) -> None:
        """Download mirror/url_path to dest (via a temp file, so a partial file is never mistaken for a full one)."""
        url = f"{self.mirror}/{url_path}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out, httpx.stream("GET", url, timeout=60, follow_redirects=True) as r:
                if r.status_code != 200:
                    raise ImageError(f"GET {url} answered HTTP {r.status_code}: check CORRAL_MIRROR and the suite")
                size = total or int(r.headers.get("content-length", 0)) or None
                done = 0
                for chunk in r.iter_bytes(_CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(f"download {Path(url_path).name}", done, size)
            os.replace(tmp, dest)
        except httpx.HTTPError as exc:
            raise ImageError(f"cannot download {url}: {exc}; check the network and CORRAL_MIRROR") from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    # -- index -----------------------------------------------------------------------------------------------

    @property
    def _dists_dir(self) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", self.mirror.split("://", 1)[-1])
        return self.cache_dir / "dists" / safe / self.suite

    def verify_inrelease(self, path: Path) -> str:
        """Check the clearsigned InRelease with gpgv; return the signed text only (never the unsigned envelope)."""
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "signed"
            r = subprocess.run(
                ["gpgv", "--keyring", str(self.keyring), "--output", str(out), str(path)],
                capture_output=True,
                text=True,
                check=False,
            )
            if r.returncode != 0 or not out.exists():
                reason = (r.stderr.strip().splitlines() or ["no reason given"])[-1]
                raise VerificationError(
                    f"InRelease of {self.mirror} {self.suite} failed signature check ({reason}): "
                    "use a genuine Debian mirror and keyring"
                )
            return out.read_text()

    def release_sha256(self, release_text: str) -> dict[str, tuple[int, str]]:
        """The SHA256 table of a Release file: path -> (size, sha256)."""
        table: dict[str, tuple[int, str]] = {}
        for st in parse_stanzas(release_text)[:1]:
            for line in st.get("SHA256", "").splitlines():
                parts = line.split()
                if len(parts) == 3:
                    table[parts[2]] = (int(parts[1]), parts[0])
        return table

    def load_index(self, progress: Progress | None = None, refresh: bool = False) -> dict[str, Package]:
        """Fetch and verify InRelease and Packages.xz (reusing cached copies that still verify); parse the index."""
        if self._index is not None and not refresh:
            return self._index
        d = self._dists_dir
        inrelease = d / "InRelease"
        if refresh or not inrelease.exists():
            self._fetch(f"dists/{self.suite}/InRelease", inrelease, progress)
        try:
            release = self.verify_inrelease(inrelease)
        except VerificationError:
            inrelease.unlink(missing_ok=True)
            raise
        rel_path = f"{self.component}/binary-{self.arch}/Packages.xz"
        table = self.release_sha256(release)
        if rel_path not in table:
            raise ImageError(f"InRelease of {self.suite} lists no {rel_path}: check the suite and architecture")
        size, digest = table[rel_path]
        # Under the archive's own path (component, architecture): one suite's indexes for two architectures must
        # never overwrite each other in a cache shared by concurrent builds.
        pkgs_xz = d / rel_path
        if refresh or not pkgs_xz.exists() or pkgs_xz.stat().st_size != size or sha256_file(pkgs_xz) != digest:
            self._fetch(f"dists/{self.suite}/{rel_path}", pkgs_xz, progress, total=size)
            self._check_file(pkgs_xz, size, digest, rel_path)
        if progress:
            progress("parse package index", 0, None)
        self._every = {}
        self._index = packages_from_index(lzma.decompress(pkgs_xz.read_bytes()).decode("utf-8", "replace"),
                                          self._every)
        return self._index

    @staticmethod
    def _check_file(path: Path, size: int | None, digest: str, what: str) -> None:
        """Remove and refuse a file whose size or sha256 differ from the verified index."""
        actual_size = path.stat().st_size
        actual = sha256_file(path)
        if (size is not None and actual_size != size) or actual != digest:
            path.unlink(missing_ok=True)
            raise VerificationError(
                f"{what} does not match the signed index (sha256 {actual[:16]}…, expected {digest[:16]}…): "
                "the mirror or a proxy corrupted it; retry or use another mirror"
            )

    # -- packages --------------------------------------------------------------------------------------------

    def package(self, name: str, progress: Progress | None = None) -> Package:
        index = self.load_index(progress)
        if name not in index:
            raise NotFound(f"package '{name}' is not in {self.suite}/{self.component} for {self.arch}")
        return index[name]

    def package_version(self, name: str, version: str, progress: Progress | None = None) -> Package:
        """``name`` at exactly ``version``; NotFound naming the versions the suite has if it is not there."""
        self.load_index(progress)
        found = [p for p in self._every.get(name, []) if p.version == version]
        if not found:
            have = ", ".join(p.version for p in self._every.get(name, [])) or "none"
            raise NotFound(f"package '{name}' {version} is not in {self.suite}/{self.component} for {self.arch} "
                           f"(it has: {have})")
        return found[-1]

    def resolve(self, names: Iterable[str], progress: Progress | None = None,
                installed: Iterable[str] = ()) -> list[Package]:
        """The packages ``names`` need to work: the Depends/Pre-Depends closure (see :func:`resolve_closure`)."""
        return resolve_closure(self.load_index(progress), names, installed)

    def download(self, pkg: Package, progress: Progress | None = None) -> Path:
        """The verified .deb of ``pkg`` in cache_dir/debs/ (downloaded once, checked every time it is reused)."""
        dest = self.cache_dir / "debs" / Path(pkg.filename).name
        if dest.exists():
            if dest.stat().st_size == pkg.size and sha256_file(dest) == pkg.sha256:
                return dest
            dest.unlink()
        self._fetch(pkg.filename, dest, progress, total=pkg.size)
        self._check_file(dest, pkg.size, pkg.sha256, Path(pkg.filename).name)
        return dest

    @staticmethod
    def extract(deb: Path, dest: Path) -> None:
        """Unpack a .deb's data into dest (no maintainer scripts run: images are assembled, not installed)."""
        dest.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise ImageError(f"dpkg-deb could not extract {deb.name}: {r.stderr.strip()[:200]}")
