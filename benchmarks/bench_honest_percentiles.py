"""Served-only against honest P90s on the paper suite, at each scenario's comparison load.

Re-runs the baselines and dopd at the comparison loads of a ``dopd experiment paper`` result
(``results.json``) and prints, side by side, the P90 TTFT and P90 TPOT over the served requests
only (as dopd reported them before) and over every request (honest: a rejected or unfinished
request counts as infinitely late, ``miss`` when the P90 lands on one), with the rejected share
and dopd's change against the best baseline both ways. The attainment of each run is checked
against the one stored in ``results.json``: equal means the same simulation, so the difference is
the counting alone::

    python3 benchmarks/bench_honest_percentiles.py
    python3 benchmarks/bench_honest_percentiles.py --scenarios conv-8b,code-70b --workers 2
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from dopd.errors import DopdError
from dopd.experiments.suites import get_suite
from dopd.experiments.tasks import CompareTask, run_compare
from dopd.metrics.summary import MetricsSummary, summarize_result

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT.parent / "shared" / "traces"
RESULTS = ROOT / "docs" / "results" / "paper" / "results.json"
POLICIES = ("colocated", "static:best", "dopd")


def run_one(job: tuple[str, str, float, str]) -> MetricsSummary:
    """Summary of one policy on one scenario at one load (a worker process's job)."""
    name, policy, load, traces = job
    suite = get_suite("paper")
    scenario = suite.scenario(name)
    outcome = run_compare(CompareTask(scenario, policy, load, traces, suite.seed))
    return summarize_result(outcome.result, scenario.slo)


def _s(x: float | None, scale: float = 1.0, fmt: str = "{:.3f}") -> str:
    if x is None:
        return "-"
    return "miss" if math.isinf(x) else fmt.format(scale * x)


def _change(mine: float | None, ref: float | None) -> str:
    if mine is None or ref is None or math.isinf(ref) or ref <= 0:
        return "-"
    return "miss" if math.isinf(mine) else f"{100 * (mine / ref - 1):+.1f}%"


def _best(values: dict[str, float | None]) -> float | None:
    known = [v for v in values.values() if v is not None]
    return min(known) if known else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", default=None, help="comma-separated subset (default all)")
    ap.add_argument("--results", default=str(RESULTS),
                    help="results.json of a paper experiment (the comparison loads)")
    ap.add_argument("--traces-dir", default=str(TRACES))
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    try:
        stored = json.loads(Path(args.results).read_text())["scenarios"]
        names = args.scenarios.split(",") if args.scenarios else list(stored)
        unknown = sorted(set(names) - set(stored))
        if unknown:
            raise DopdError(f"unknown scenario(s) {', '.join(unknown)}")
        if args.workers < 1:
            raise DopdError("workers must be >= 1")
    except (OSError, ValueError, KeyError, DopdError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    jobs = [(n, p, float(stored[n]["comparison_load"]), args.traces_dir)
            for n in names for p in POLICIES]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        got = dict(zip([(n, p) for n, p, _l, _t in jobs], pool.map(run_one, jobs), strict=True))
    print(f"P90 at each scenario's comparison load ({args.results}); served = over served "
          "requests only, honest = every request")
    print(f"{'scenario':14s} {'policy':12s} {'attain %':>8s} {'same run':>8s} {'rej %':>6s} "
          f"{'TTFT served':>11s} {'honest':>7s} {'TPOT ms served':>14s} {'honest':>7s}")
    for n in names:
        for p in POLICIES:
            s = got[(n, p)]
            same = math.isclose(s.attainment, stored[n]["policies"][p]["attainment"],
                                abs_tol=1e-12)
            print(f"{n:14s} {p:12s} {100 * s.attainment:8.1f} {'yes' if same else 'NO':>8s} "
                  f"{100 * s.rejected_share:6.1f} {_s(s.ttft_p90_served):>11s} "
                  f"{_s(s.ttft_p90):>7s} {_s(s.tpot_p90_served, 1e3, '{:.1f}'):>14s} "
                  f"{_s(s.tpot_p90, 1e3, '{:.1f}'):>7s}")
    print("\ndopd against the best baseline (lowest P90 of colocated and static:best)")
    print(f"{'scenario':14s} {'TTFT served':>11s} {'honest':>8s} {'TPOT served':>11s} "
          f"{'honest':>8s}")
    for n in names:
        me = got[(n, "dopd")]
        base = [got[(n, b)] for b in POLICIES[:2]]
        cells = []
        for metric in ("ttft_p90", "tpot_p90"):
            for suffix in ("_served", ""):
                key = metric + suffix
                ref = _best({str(i): getattr(b, key) for i, b in enumerate(base)})
                cells.append(_change(getattr(me, key), ref))
        print(f"{n:14s} {cells[0]:>11s} {cells[1]:>8s} {cells[2]:>11s} {cells[3]:>8s}")
    print(f"({len(jobs)} simulations, {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
