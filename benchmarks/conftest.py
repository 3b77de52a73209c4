"""pytest-benchmark set-up for benchmarks/test_micro.py (not part of the unit run).

Each benchmark call does many operations (a C call is too short to time
alone); `per_op(benchmark, ops)` records how many, and the summary at the end
prints the median time per operation, the figure to compare within a group.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent
# Benchmark this worktree's build, whatever else is on the path.
for p in (str(BENCH_DIR.parent / "src"), str(BENCH_DIR)):
    if p not in sys.path:
        sys.path.insert(0, p)

_RESULTS: list[tuple[str, str, float, int]] = []


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """pyproject's addopts run the unit suite on pytest-xdist workers; a
    benchmark must have the cores to itself (and pytest-benchmark turns
    itself off under xdist), so these run in one process whatever -n says.
    Before xdist's own pytest_configure, which starts the workers."""
    if getattr(config.option, "dist", "no") != "no":
        config.option.dist = "no"
        config.option.numprocesses = 0
        config.option.tx = []


@pytest.fixture
def per_op():
    def record(benchmark, ops: int) -> None:
        benchmark.extra_info["ops_per_call"] = ops
        stats = getattr(benchmark, "stats", None)
        if stats is None:               # --benchmark-disable: nothing was timed
            return
        ns = stats.stats.median / ops * 1e9
        benchmark.extra_info["median_ns_per_op"] = ns
        _RESULTS.append((benchmark.group or "", benchmark.name, ns, ops))
    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _RESULTS:
        return
    tr = terminalreporter
    tr.section("median time per operation (compare within a group)")
    width = max(len(name) for _, name, _, _ in _RESULTS)
    for group in sorted({g for g, _, _, _ in _RESULTS}):
        rows = sorted((r for r in _RESULTS if r[0] == group), key=lambda r: r[2])
        fastest = rows[0][2]
        tr.write_line(f"{group}:")
        for _, name, ns, ops in rows:
            tr.write_line(f"  {name:<{width}}  {ns:10.1f} ns/op  {ns / fastest:6.2f}x  "
                          f"({ops:,} ops/call)")
