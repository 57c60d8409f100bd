"""API fuzzing: schemathesis generates requests from the OpenAPI document a live corrald serves (fetched over its
unix socket, not generated in-process) and sends them, as real HTTP, to that daemon over the same socket.

Before fuzzing, the daemon has real content: the tiny image, a stopped VM and a running VM (`corral launch`). Routes
with a VM name get one of the two fixture names in a share of their examples, so that they reach real objects;
the routes that would delete a fixture VM or change its state (delete, start, stop, suspend, exec, ...: DESTRUCTIVE)
are fuzzed against nonexistent names only. Routes that would reach outside the machine or the test (an image build
or import that downloads, a bridge network, a file written at any host path) have those inputs tamed (``tame``).

Checks on every response:

- no 5xx (schemathesis's ``not_a_server_error``), and no hang (a 30 s read timeout);
- the response conforms to the schema the document declares (``response_schema_conformance``, on the JSON routes;
  the NDJSON streams and plain-text logs declare no schema to conform to);
- a refusal says why: its body is Corral's error body (``error``, ``message``), the message one line;
- a refused request changes nothing: for *every* request answered 4xx (the store is small, so all of them are
  checked, in the quick run as in the soak), the store and the files of the Corral home are the same before and
  after it. The store is compared as a dump of every table but the event log ``events`` (it records refused
  operations by design) and the idle sampler's ``vms.last_active`` (a measurement the daemon updates by itself); the
  home as a listing of paths with sizes and, for files under 1 MiB, a SHA-256, leaving out what changes by itself:
  logs, sockets, the SQLite files (compared as the dump) and the disk contents of the running VM.

Bounds: each operation gets at most ``max_examples`` requests per generation mode (valid, then invalid; the invalid
mode only where an input can be invalid at all), 4 in the quick run (`make test`), 40 in the soak run (marker
``soak``, `make test-faults`); Hypothesis is derandomized, so every run sends the same requests. A streamed route
(NDJSON) that refuses after its 200 says so in an error line: that is not a 4xx, and not compared.

The test prints the figures it measured (operations, requests, responses by status class, refused requests
checked, failures); docs/reliability.md ("API fuzzing") records them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import CorralEnv, ok

schemathesis = pytest.importorskip("schemathesis")  # in the dev extras; the rest of the suite runs without it
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402  (hypothesis comes with schemathesis)
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

pytestmark = pytest.mark.vm

STOPPED, RUNNING = "fz-stopped", "fz-running"
FIXTURE_VMS = (STOPPED, RUNNING)
BASE_URL = "http://corral"  # the host part is ignored: the transport connects to the unix socket
TIMEOUT = httpx.Timeout(30.0, connect=5.0)

#: Would delete a fixture VM or change its state, run things in its guest, bind host ports, or wait for long:
#: fuzzed with nonexistent VM names only.
DESTRUCTIVE = {
    ("DELETE", "/v1/vms/{name}"), ("POST", "/v1/vms/{name}/start"), ("POST", "/v1/vms/{name}/stop"),
    ("POST", "/v1/vms/{name}/kill"), ("POST", "/v1/vms/{name}/restart"), ("POST", "/v1/vms/{name}/pause"),
    ("POST", "/v1/vms/{name}/resume"), ("POST", "/v1/vms/{name}/suspend"), ("POST", "/v1/vms/{name}/wait-ready"),
    ("POST", "/v1/vms/{name}/wait"), ("POST", "/v1/vms/{name}/exec"), ("PUT", "/v1/vms/{name}/files"),
    ("POST", "/v1/vms/{name}/ports"), ("POST", "/v1/vms/{name}/snapshots"),
    ("POST", "/v1/vms/{name}/snapshots/{snapshot}/revert"), ("POST", "/v1/vms/{name}/clone"),
    ("POST", "/v1/vms/{name}/export"), ("POST", "/v1/vms/{name}/repair"), ("POST", "/v1/vms/{name}/balloon"),
    ("PUT", "/v1/vms/{name}/idle"), ("POST", "/v1/vms/{name}/disks/{disk}/detach"),
    ("POST", "/v1/vms/{name}/disks/{disk}/attach"),
}
#: Not fuzzed at all, and why.
SKIPPED = {
    ("GET", "/v1/events/stream"): "an endless stream (heartbeats): no response to check",
}
#: Image names that a build would really build (or download): builds are fuzzed with other names.
REAL_IMAGES = {"tiny", "debian-12"}


def client_for(socket: Path) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), base_url=BASE_URL, timeout=TIMEOUT)


# -- "a refused request changes nothing" --------------------------------------------------------------------------
VOLATILE_NAMES = ("corrald.log", "serial.log", "qemu.log", "switch.log", "corral.db")  # prefixes
HASH_LIMIT = 1 << 20


def store_dump(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table but the event log, rows sorted; without the idle sampler's own measurement."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                            "AND name NOT IN ('events', 'sqlite_sequence') ORDER BY name")]
        dump = {}
        for t in tables:
            cols = [r[1] for r in con.execute(f"PRAGMA table_info({t})") if (t, r[1]) != ("vms", "last_active")]
            rows = con.execute(f"SELECT {', '.join(cols)} FROM {t}").fetchall()
            dump[t] = sorted(rows, key=repr)
        return dump
    finally:
        con.close()


_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}


def digest_of(p: Path, st_: os.stat_result) -> str:
    """SHA-256 of a small file, cached by (path, inode, size, mtime, ctime): any write changes one of them."""
    key = (str(p), st_.st_ino, st_.st_size, st_.st_mtime_ns, st_.st_ctime_ns)
    if key not in _DIGESTS:
        try:
            _DIGESTS[key] = hashlib.sha256(p.read_bytes()).hexdigest()
        except OSError:
            _DIGESTS[key] = "unreadable"
    return _DIGESTS[key]


def file_listing(home: Path, running: set[str]) -> dict[str, tuple[str, int, str]]:
    """Path -> (kind, size, sha256 of a small file) under the home, less what changes by itself."""
    out: dict[str, tuple[str, int, str]] = {}
    for root, dirs, files in os.walk(home):
        rel_root = Path(root).relative_to(home)
        for d in dirs:
            out[str(rel_root / d)] = ("dir", 0, "")
        for f in files:
            p = Path(root) / f
            rel = str(rel_root / f)
            if f.startswith(VOLATILE_NAMES) or f.endswith(".sock"):
                continue
            try:
                st_ = p.lstat()
            except FileNotFoundError:
                continue
            if p.is_symlink():
                out[rel] = ("link", 0, os.readlink(p))
                continue
            if rel_root.parts[:1] == ("vms",) and len(rel_root.parts) >= 2 and rel_root.parts[1] in running \
                    and f.endswith(".qcow2"):
                out[rel] = ("file", -1, "")  # the guest writes it: only that it exists
                continue
            out[rel] = ("file", st_.st_size, digest_of(p, st_) if st_.st_size <= HASH_LIMIT else "")
    return out


@dataclass
class Home:
    env: CorralEnv
    running: set[str]

    def state(self) -> tuple[dict[str, list[tuple[Any, ...]]], dict[str, tuple[str, int, str]]]:
        return store_dump(self.env.settings.database), file_listing(self.env.home, self.running)


def diff(before: tuple[dict[str, Any], dict[str, Any]], after: tuple[dict[str, Any], dict[str, Any]]) -> str:
    out = []
    for t in sorted(set(before[0]) | set(after[0])):
        if before[0].get(t) != after[0].get(t):
            out.append(f"table {t}: {before[0].get(t)} -> {after[0].get(t)}")
    for p in sorted(set(before[1]) | set(after[1])):
        if before[1].get(p) != after[1].get(p):
            out.append(f"file {p}: {before[1].get(p)} -> {after[1].get(p)}")
    return "; ".join(out)[:2000]


# -- fuzzing ------------------------------------------------------------------------------------------------------
@dataclass
class Figures:
    operations: int = 0
    skipped: list[str] = field(default_factory=list)
    requests: int = 0
    by_class: Counter[str] = field(default_factory=Counter)
    refused_checked: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    slowest: list[tuple[float, str]] = field(default_factory=list)

    def report(self, title: str) -> str:
        classes = ", ".join(f"{k}: {v}" for k, v in sorted(self.by_class.items()))
        lines = [
            f"== {title} ==",
            f"operations fuzzed: {self.operations} (skipped: {len(self.skipped)}: {'; '.join(self.skipped)})",
            f"requests sent: {self.requests}",
            f"responses by status class: {classes}",
            f"refused (4xx) requests checked for 'changed nothing': {self.refused_checked}",
            f"failures: {len(self.failures)}",
            f"seconds: {self.seconds:.1f} (slowest operations: "
            + ", ".join(f"{w} {t:.1f}s" for t, w in sorted(self.slowest, reverse=True)[:5]) + ")",
        ]
        return "\n".join(lines)


def tame(path: str, case: Any, scratch: str) -> None:
    """Keep a generated request inside the machine and the test: no downloads, no host bridge, no file written at
    an arbitrary host path (absolute paths are moved under a scratch directory)."""
    body = case.body if isinstance(case.body, dict) else None
    params = case.path_parameters if isinstance(case.path_parameters, dict) else {}
    if path == "/v1/images/{name}/build" and params.get("name") in REAL_IMAGES:
        params["name"] = "fz-" + str(params["name"])
    if body is None:
        return
    if path == "/v1/networks" and body.get("bridge") is True:
        body["bridge"] = False
    if path == "/v1/images/import" and isinstance(body.get("source"), str):
        src = body["source"]
        if "://" in src or not src.startswith("/"):
            body["source"] = "/nonexistent/" + src.replace("/", "_")  # neither a URL nor a catalog name
    for key in ("path", "repo"):  # archives and backup repositories
        v = body.get(key)
        if isinstance(v, str) and v.startswith("/"):
            body[key] = scratch + v


def fuzz(corral: CorralEnv, max_examples: int, title: str) -> Figures:
    with client_for(corral.settings.socket) as http:
        r = http.get("/openapi.json")
        assert r.status_code == 200, r.text
        doc = r.json()
    schema = schemathesis.openapi.from_dict(doc)
    home = Home(corral, running={RUNNING})
    check_the_check(corral, home)
    fig = Figures()
    t0 = time.monotonic()
    scratch = tempfile.mkdtemp(prefix="fz-scratch-", dir="/tmp")
    http = client_for(corral.settings.socket)
    try:
        for result in schema.get_all_operations():
            op = result.ok()
            key = (op.method.upper(), op.path)
            if key in SKIPPED:
                fig.skipped.append(f"{key[0]} {key[1]} ({SKIPPED[key]})")
                continue
            fig.operations += 1
            t_op = time.monotonic()
            modes = [GenerationMode.POSITIVE]
            if can_be_invalid(doc["paths"][op.path][op.method.lower()]):
                modes.append(GenerationMode.NEGATIVE)
            for mode in modes:
                run_operation(http, home, op, key, mode, max_examples, fig, scratch)
            fig.slowest.append((time.monotonic() - t_op, f"{key[0]} {key[1]}"))
    finally:
        http.close()
        cleanup_networks(corral)
        shutil.rmtree(scratch, ignore_errors=True)
    fig.seconds = time.monotonic() - t0
    print("\n" + fig.report(title))
    return fig


def can_be_invalid(definition: dict[str, Any]) -> bool:
    """Whether a request to this operation can be invalid at all: not when its only inputs are strings in the path
    (any string is a name; the negative mode would find nothing to generate, and take seconds to find that out)."""
    if "requestBody" in definition:
        return True
    for p in definition.get("parameters", []):
        schema = {k: v for k, v in p.get("schema", {}).items() if k not in ("title", "description")}
        if p.get("in") != "path" or schema != {"type": "string"}:
            return True
    return False


def real_objects(key: tuple[str, str]) -> tuple[list[str], tuple[str, ...]]:
    """The path parameters that name a VM or an image, and the real objects they may name (none for a destructive
    route: it gets generated names, never a fixture's)."""
    method, path = key
    if path.startswith("/v1/vms/{name}") or path.startswith("/v1/backups/schedules/{vm}"):
        param = "name" if "{name}" in path else "vm"
        return [param], () if key in DESTRUCTIVE else FIXTURE_VMS
    if path == "/v1/images/{name}":  # show, and a removal refused while VMs use it
        return ["name"], ("tiny",)
    return [], ()


def run_operation(http: httpx.Client, home: Home, op: Any, key: tuple[str, str], mode: GenerationMode,
                  max_examples: int, fig: Figures, scratch: str) -> None:
    method, path = key
    names, real = real_objects(key)
    try:
        strategy = op.as_strategy(generation_mode=mode)
    except Exception as exc:  # e.g. nothing to negate in an operation without parameters
        fig.skipped.append(f"{method} {path} {mode.value} ({type(exc).__name__})")
        return
    target = st.sampled_from([None, *real]) if real else st.just(None)

    @settings(max_examples=max_examples, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=strategy, target=target)
    def one(case: Any, target: str | None) -> None:
        params = case.path_parameters if isinstance(case.path_parameters, dict) else None
        if params is not None:
            for p in names:
                if target is not None:
                    params[p] = target
                elif params.get(p) in (*FIXTURE_VMS, "tiny"):
                    params[p] = "fz-ghost"
        tame(path, case, scratch)
        send(http, home, case, key, mode, fig)

    try:
        one()
    except Unsatisfiable:  # the negative mode of an operation with nothing to make invalid
        fig.skipped.append(f"{method} {path} {mode.value} (nothing to generate)")


def send(http: httpx.Client, home: Home, case: Any, key: tuple[str, str], mode: GenerationMode, fig: Figures) -> None:
    kw = case.as_transport_kwargs(base_url=BASE_URL)
    request = {"method": kw["method"], "url": kw["url"], "headers": kw.get("headers") or {},
               "params": kw.get("params"), "cookies": kw.get("cookies") or None}
    if "json" in kw:
        request["json"] = kw["json"]
    elif "data" in kw:
        data = kw["data"]
        request["content" if isinstance(data, (bytes, str)) else "data"] = data
    what = f"{key[0]} {key[1]} [{mode.value}] {kw['method']} {kw['url']} params={kw.get('params')!r} " \
           f"body={str(kw.get('json', kw.get('data')))[:300]}"
    before = home.state()
    fig.requests += 1
    try:
        response = http.request(**request)
    except httpx.HTTPError as exc:
        fig.failures.append(f"{what}: no response ({type(exc).__name__}: {exc})")
        fig.by_class["none"] += 1
        return
    code = response.status_code
    fig.by_class[f"{code // 100}xx"] += 1
    checks: list[Any] = [not_a_server_error]
    if response.headers.get("content-type", "").startswith("application/json"):
        checks.append(response_schema_conformance)
    try:
        case.validate_response(response, checks=checks)
    except FailureGroup as group:
        found = "; ".join(f"{f.title}: {f.message}"[:300] for f in group.exceptions)
        fig.failures.append(f"{what}: {code} {response.text[:300]!r}: {found}")
    if 400 <= code < 500:
        if problem := unclear(response):
            fig.failures.append(f"{what}: refused with {code} {response.text[:200]!r}: {problem}")
        fig.refused_checked += 1
        after = home.state()
        if after != before:
            fig.failures.append(f"{what}: refused with {code} {response.text[:200]!r} but changed: "
                                f"{diff(before, after)}")


def unclear(response: httpx.Response) -> str:
    """What is wrong with a refusal's body, if anything: it must be Corral's error body, its message one line."""
    try:
        body = response.json()
    except ValueError:
        return "not a JSON error body"
    if not isinstance(body, dict) or not isinstance(body.get("message"), str) or not body["message"].strip():
        return "no one-line message (error body: {error, message})"
    if "\n" in body["message"]:
        return "the message is more than one line"
    return ""


def check_the_check(corral: CorralEnv, home: Home) -> None:
    """The comparison sees what a request changes (a label set and removed again), and it sees the fixtures' files."""
    before = home.state()
    assert any(p.startswith(f"vms/{STOPPED}/") for p in before[1]) and any(p.startswith("images/tiny/")
                                                                          for p in before[1]), before[1]
    corral.client.set_labels(STOPPED, set={"fz": "1"})
    assert home.state() != before, "setting a label changed nothing the comparison sees"
    corral.client.set_labels(STOPPED, remove=["fz"])
    assert home.state() == before, diff(before, home.state())


def cleanup_networks(corral: CorralEnv) -> None:
    """Private networks created by the fuzzer have switch processes: remove them through the daemon."""
    with client_for(corral.settings.socket) as http:
        r = http.get("/v1/networks")
        if r.status_code == 200:
            for n in r.json():
                http.delete(f"/v1/networks/{n['name']}")


def prepare(corral: CorralEnv) -> None:
    """The fixture objects: the tiny image (the ``corral`` fixture), a VM that runs, one defined but stopped."""
    ok(corral, "launch", RUNNING)
    corral.client.create_vm({"name": STOPPED, "image": "tiny"})


def assert_clean(fig: Figures) -> None:
    for f in fig.failures:
        print("FAILURE:", f)
    assert not fig.failures, f"{len(fig.failures)} failure(s):\n" + "\n".join(fig.failures[:40])


def test_api_fuzz_quick(corral: CorralEnv) -> None:
    prepare(corral)
    assert_clean(fuzz(corral, max_examples=4, title="API fuzzing, quick run"))


@pytest.mark.soak
def test_api_fuzz_soak(corral: CorralEnv) -> None:
    prepare(corral)
    assert_clean(fuzz(corral, max_examples=40, title="API fuzzing, soak run"))
