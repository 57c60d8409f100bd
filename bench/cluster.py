"""Benchmark of the cluster scheduler (corral.cluster.placement.place): 1,000 placements, one after the other, over 50
simulated hosts, beside a trivial per-placement ``sorted()`` of the same hosts in the same run. Registered in
``bench.run`` (it needs no daemon and boots nothing); ``python -m bench.cluster`` runs it alone, in a second, and
puts its result into bench/results.json and docs/benchmarks.md, the other benchmarks' results kept as they were.

The scheduler is a pure function called once per placement inside an etcd transaction; what matters is that a
fleet launch of hundreds of VMs does not wait on it (target: 1,000 placements in well under 1 s).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bench.harness import Context
from bench.report import BenchResult, Row, ratio, render_markdown, write_json
from corral.cluster.models import HostRecord, HostState, PlacementRequest, Strategy, VMPlacement
from corral.cluster.placement import IDLE_STATES, NoHostFits, place

HOSTS = 50
PLACEMENTS = 1000
TARGET_S = 1.0
KEY = "cluster_placement"
SEED = 7  # the same cluster and requests every run, so runs compare


def simulated_hosts(rng: random.Random) -> list[HostRecord]:
    """50 hosts of varied sizes, overcommit and labels; 4 draining and 2 down; images and templates on most."""
    hosts = []
    for i in range(HOSTS):
        state = HostState.DRAINING if i % 12 == 5 else HostState.DOWN if i % 25 == 11 else HostState.READY
        hosts.append(HostRecord(
            name=f"h{i:02d}", address=f"https://10.0.0.{i + 1}:8443", cert_pem="", state=state,
            labels={"zone": "abc"[i % 3], **({"ssd": "yes"} if i % 4 == 0 else {})},
            cpus=rng.choice([8, 16, 32, 64]), memory_mib=rng.choice([32768, 65536, 131072, 262144]),
            cpu_overcommit=rng.choice([1.0, 2.0, 4.0]), memory_overcommit=rng.choice([1.0, 1.0, 1.5]),
            images=["tiny", "debian"] if i % 5 else ["tiny"], templates=["web"] if i % 2 else []))
    return hosts


def simulated_requests(rng: random.Random) -> list[PlacementRequest]:
    """1,000 VMs: mostly spread, a fifth packed; fleets of 5 (anti-affinity); some with labels, images, templates."""
    reqs = []
    for i in range(PLACEMENTS):
        reqs.append(PlacementRequest(
            vm=f"vm{i:04d}", vcpus=rng.choice([1, 1, 2, 4]), memory_mib=rng.choice([512, 1024, 2048, 4096]),
            image=rng.choice(["tiny", "tiny", "debian"]), template="web" if i % 10 == 3 else None,
            host_labels={"zone": "abc"[i % 3]} if i % 4 == 1 else {"ssd": "yes"} if i % 20 == 2 else {},
            group=f"fleet{i // 5}" if i % 50 < 25 else None,
            strategy=Strategy.PACK if i % 5 == 4 else Strategy.SPREAD))
    return reqs


def _placement(r: PlacementRequest, host: str) -> VMPlacement:
    return VMPlacement(name=r.vm, host=host, vcpus=r.vcpus, memory_mib=r.memory_mib, group=r.group, state="running")


def run_scheduler(hosts: Sequence[HostRecord],
                  reqs: Sequence[PlacementRequest]) -> tuple[float, list[VMPlacement], int]:
    """Seconds for placing every request in turn (each placement seen by the next), the placements, refusals."""
    placements: list[VMPlacement] = []
    refused = 0
    t0 = time.perf_counter()
    for r in reqs:
        try:
            h = place(r, hosts, placements)
        except NoHostFits:
            refused += 1
            continue
        placements.append(_placement(r, h.name))
    return time.perf_counter() - t0, placements, refused


def run_baseline(hosts: Sequence[HostRecord], reqs: Sequence[PlacementRequest]) -> float:
    """The floor any scheduler pays: per placement, one ``sorted()`` of the hosts by free memory, the placement
    appended (no filters, no room computed from the placements)."""
    placements: list[VMPlacement] = []
    t0 = time.perf_counter()
    for r in reqs:
        best = sorted(hosts, key=lambda h: (-h.memory_free_mib, h.name))[0]
        placements.append(_placement(r, best.name))
    return time.perf_counter() - t0


def check(hosts: Sequence[HostRecord], placements: Sequence[VMPlacement]) -> list[str]:
    """What the scheduler got wrong in the run: a host over its limits, a draining or down host chosen."""
    by_name = {h.name: h for h in hosts}
    cpu: Counter[str] = Counter()
    mem: Counter[str] = Counter()
    for p in placements:
        if p.state not in IDLE_STATES:
            cpu[p.host] += p.vcpus
            mem[p.host] += p.memory_mib
    wrong = [f"{n} over its limits" for n, h in by_name.items()
             if cpu[n] > h.cpu_limit or mem[n] > h.memory_limit_mib]
    return wrong + [f"{p.name} on {p.host} ({by_name[p.host].state.value})" for p in placements
                    if by_name[p.host].state != HostState.READY]


def measure(runs: int) -> BenchResult:
    rng = random.Random(SEED)
    hosts, reqs = simulated_hosts(rng), simulated_requests(rng)
    corral = Row(f"Corral scheduler: {PLACEMENTS:,} placements over {HOSTS} hosts, total", unit="ms")
    base = Row(f"trivial baseline: {PLACEMENTS:,} × sorted() of {HOSTS} hosts by free memory, total", unit="ms",
               baseline=True)
    placements: list[VMPlacement] = []
    refused = 0
    for _ in range(runs):  # interleaved, so host noise hits both alike
        secs, placements, refused = run_scheduler(hosts, reqs)
        corral.samples.append(round(secs * 1000, 2))
        base.samples.append(round(run_baseline(hosts, reqs) * 1000, 2))
    wrong = check(hosts, placements)
    per_host = Counter(p.host for p in placements)
    ready = [h for h in hosts if h.state == HostState.READY]
    total_s = (corral.median or 0) / 1000
    r = ratio(corral.median, base.median)
    return BenchResult(
        key=KEY,
        title=f"Cluster scheduler: {PLACEMENTS:,} placements over {HOSTS} simulated hosts",
        rows=[corral, base],
        summary={
            "per placement (median run)": f"{total_s / PLACEMENTS * 1e6:.0f} µs",
            "ratio of medians, Corral / trivial sorted() baseline": f"{r:.1f} x" if r is not None else "–",
            f"target: {PLACEMENTS:,} placements < {TARGET_S:g} s": "met" if total_s < TARGET_S else "not met",
            "placed / refused (NoHostFits)": f"{len(placements)} / {refused}",
            "VMs per ready host, min / max": f"{min(per_host.get(h.name, 0) for h in ready)} / "
                                             f"{max(per_host.values(), default=0)}",
            "every placement valid (no host over its limits, none on a draining or down host)":
                "yes" if not wrong else f"no: {'; '.join(wrong[:5])}",
        },
        details={"hosts": HOSTS, "placements": PLACEMENTS, "seed": SEED, "refused": refused,
                 "ready_hosts": len(ready), "wrong": wrong, "ratio": r, "target_s": TARGET_S},
        how=(
            f"In-process, no daemon, no VM: {HOSTS} host records (8 to 64 threads, 32 to 256 GiB, CPU overcommit "
            "1 to 4, memory overcommit 1 or 1.5, zone labels a/b/c, `ssd` on a quarter, images `tiny` and `debian` "
            "on most, template `web` on half; 4 draining and 2 down) and "
            f"{PLACEMENTS:,} requests (1 to 4 vCPUs, 512 to 4096 MiB; a fifth `pack`, the rest `spread`; half in "
            "fleets of 5 with anti-affinity; a quarter with a zone label, some with `ssd`, a tenth with a "
            f"template), generated from seed {SEED}. Each request is passed to `corral.cluster.placement.place` "
            "with every placement so far (each placement appended before the next, as the etcd transactions "
            "make it), so the last calls see nearly 1,000: the row is the total of all of them. A request no host "
            "can take (late in the run, a few whose label and template leave only hosts out of vCPUs) is refused with "
            "NoHostFits, its time counted, and not placed. The baseline, "
            "in the same run and interleaved, does per placement only what any scheduler must at least do: one "
            f"`sorted()` of the {HOSTS} hosts by their free memory, and appends the placement. "
            f"{runs} runs of each. Lower is better; the target is the Corral total under {TARGET_S:g} s. The "
            "placements of the last run are checked afterwards against every host's limits and state. Run alone "
            "with `python -m bench.cluster` (writes bench/results.json and this page, the other sections kept)."
        ),
    )


def cluster_placement(ctx: Context) -> BenchResult:
    """The entry for ``bench.run``: only its ``quick`` is used (nothing runs on the bench's Corral)."""
    return measure(runs=5 if ctx.quick else 20)


ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
DOC = ROOT / "docs" / "benchmarks.md"


def _merge(result: BenchResult) -> None:
    """Put ``result`` into bench/results.json (replacing its last one) and render docs/benchmarks.md again from it:
    the other benchmarks' entries and the host facts of their run stay as they were."""
    old = json.loads(RESULTS.read_text())
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    result.how += f" (Measured by `python -m bench.cluster` on {date}.)"
    entries = [b for b in old["benchmarks"] if b["key"] != KEY]
    kept = [BenchResult(key=b["key"], title=b["title"], how=b["how"], summary=b["summary"], details=b["details"],
                        error=b["error"], rows=[Row(label=r["label"], samples=r["samples"], unit=r["unit"],
                                                    baseline=r["baseline"], note=r["note"]) for r in b["rows"]])
            for b in entries]
    at = next((i for i, b in enumerate(old["benchmarks"]) if b["key"] == KEY), len(kept))
    results = [*kept[:at], result, *kept[at:]]
    write_json(RESULTS, old["host"], results)
    DOC.write_text(render_markdown(old["host"], results, "python -m bench.run"))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    result = measure(runs=5 if "--quick" in args else 20)
    if "--no-write" not in args:
        _merge(result)
    for row in result.rows:
        print(f"{row.label}: median {row.median:.1f} {row.unit}, min {row.min:.1f} {row.unit}")
    for k, v in result.summary.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
