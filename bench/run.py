"""Run the benchmark suite: ``python -m bench.run [--quick] [--only NAME] [--runs N]``.

Writes ``bench/results.json`` and ``docs/benchmarks.md``. Uses a throw-away Corral home under /tmp with its own
daemon; the image cache is ``$CORRAL_CACHE`` (default ``~/.cache/corral``). Everything it started is killed by pid
at the end, even on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from bench import cluster
from bench.cases import BENCHMARKS as ON_CORRAL
from bench.cases import delete_all_vms, warm_up
from bench.harness import BenchHome, Context, host_facts, load_average
from bench.report import BenchResult, Row, render_markdown, write_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
DOC = ROOT / "docs" / "benchmarks.md"
#: Benchmarks of pure code, run in this process: no daemon, no VM (``python -m bench.cluster`` runs it alone).
IN_PROCESS = {cluster.KEY: cluster.cluster_placement}
BENCHMARKS = ON_CORRAL | IN_PROCESS


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--quick", action="store_true", help="fewer runs and VMs (2 launch rounds, 4 VMs)")
    p.add_argument("--only", action="append", choices=sorted(BENCHMARKS), help="run only this benchmark")
    p.add_argument("--runs", type=int, help="launch rounds (default 5, --quick 2)")
    p.add_argument("--no-write", action="store_true", help="print the Markdown, do not write the files")
    args = p.parse_args(argv)
    runs = args.runs or (2 if args.quick else 5)
    selected = args.only or list(BENCHMARKS)
    command = "python -m bench.run" + (" --quick" if args.quick else "")

    # 100 VMs of 1 vCPU run at once in the crowd benchmark (50 in the memory one): more than the default 4 vCPUs per
    # host thread allow (docs/how-to/many-vms.md).
    os.environ.setdefault("CORRAL_CPU_OVERCOMMIT", "64")
    bh = BenchHome.create()
    results: list[BenchResult] = []
    try:
        log(f"Corral home {bh.home}, cache {bh.settings.cache}")
        bh.start_daemon()
        log("installing the tiny image from the build cache")
        bh.client.build_image("tiny")
        log("warm-up: one untimed Corral launch (probes the accelerator, fills the page cache)")
        warm_up(bh)
        host = host_facts(bh, args.quick)
        log(f"host: {host['cores']} cores, accel {host['accel']}, {host['qemu']}")
        ctx = Context(bh=bh, quick=args.quick, runs=runs, accel=host["accel"] or "tcg", log=log)
        for key in selected:
            log(f"== {key}")
            try:
                results.append(BENCHMARKS[key](ctx))
            except Exception as exc:  # one failing benchmark must not lose the others' results
                traceback.print_exc()
                results.append(BenchResult(key=key, title=key, how="", error=f"{type(exc).__name__}: {exc}"))
                if bh.daemon_pid() is None:
                    bh.start_daemon()
                delete_all_vms(bh)
        host["load_end"] = load_average()
    finally:
        bh.cleanup()

    if args.only and RESULTS.exists():  # the benchmarks not run keep their last results (and say when)
        results = _previous(results, args.only)
    md = render_markdown(host, results, command)
    if args.no_write:
        print(md)
    else:
        write_json(RESULTS, host, results)
        DOC.write_text(md)
        log(f"wrote {RESULTS.relative_to(ROOT)} and {DOC.relative_to(ROOT)}")
        print(md)
    return 1 if any(r.error for r in results) else 0


KEPT = "Measured in the run of"


def _previous(results: list[BenchResult], ran: list[str]) -> list[BenchResult]:
    """``results`` with, for every other benchmark, its result from the last bench/results.json, in BENCHMARKS
    order; each kept one notes the date of its run."""
    old = json.loads(RESULTS.read_text())
    date = old.get("host", {}).get("date", "an earlier run")
    fresh = {r.key: r for r in results}
    merged = []
    for key in BENCHMARKS:
        if key in fresh:
            merged.append(fresh[key])
            continue
        prev = next((b for b in old.get("benchmarks", []) if b["key"] == key), None)
        if prev is None:
            continue
        rows = [Row(label=r["label"], samples=r["samples"], unit=r["unit"], baseline=r["baseline"], note=r["note"])
                for r in prev["rows"]]
        how = prev["how"] if KEPT in prev["how"] else prev["how"] + f" ({KEPT} {date}; not run again since.)"
        merged.append(BenchResult(key=key, title=prev["title"], how=how, rows=rows,
                                  summary=prev["summary"], details=prev["details"], error=prev["error"]))
    return merged


if __name__ == "__main__":
    sys.exit(main())
