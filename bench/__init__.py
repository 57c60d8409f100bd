"""Corral's benchmark suite: measurement only, never asserted on. Run with ``python -m bench.run [--quick]``.

Each benchmark is one function in :mod:`bench.cases` (registered in ``BENCHMARKS``) that measures Corral and a
baseline taken in the same run, and returns a :class:`bench.report.BenchResult`; :mod:`bench.run` writes
``bench/results.json`` and the table in ``docs/benchmarks.md``.
"""
