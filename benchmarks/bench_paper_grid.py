"""Policy variants over the whole paper suite: attainment on every scenario at multiples of its
comparison load, and each variant's mean over that grid, side by side in one run.

The comparison loads come from a ``dopd experiment paper`` result (``results.json``: the load at
which the best baseline reaches its attainment target), so the grid probes the region that the
goodput targets are about (1.5x the baselines' goodput is a multiple of 1.5). Each cell is one
deterministic simulation (seed 0)::

    python3 benchmarks/bench_paper_grid.py dopd dopd:hybrid "dopd@length-aware:admit_k=1.5"
    python3 benchmarks/bench_paper_grid.py --multiples 1,1.25,1.5 --scenarios conv-8b,code-70b dopd

A variant is ``SPEC`` or ``SPEC@ROUTER`` as in ``bench_paper_variants.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from dopd.data import TRACES_DIR
from dopd.errors import DopdError
from dopd.experiments.sources import scenario_workload
from dopd.experiments.suites import get_suite
from dopd.metrics.summary import summarize_result
from dopd.sim.simulation import run_simulation

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "paper" / "results.json"


def attainment(job: tuple[str, float, str, str]) -> float:
    """Attainment of one variant on one scenario at one load (a worker process's job)."""
    name, load, variant, traces = job
    scenario = get_suite("paper").scenario(name)
    workload = scenario_workload(scenario, load, Path(traces), 0)
    spec, _, router = variant.partition("@")
    config = dataclasses.replace(scenario.cluster, router=router) if router else scenario.cluster
    result = run_simulation(workload, config, spec, scenario.slo, 0)
    return summarize_result(result, scenario.slo).attainment


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", help="SPEC or SPEC@ROUTER")
    ap.add_argument("--multiples", default="1,1.25,1.5",
                    help="multiples of each scenario's comparison load (default 1,1.25,1.5)")
    ap.add_argument("--scenarios", default=None, help="comma-separated subset (default all)")
    ap.add_argument("--results", default=str(RESULTS),
                    help="results.json of a paper experiment (the comparison loads)")
    ap.add_argument("--traces-dir", default=str(TRACES_DIR))
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    try:
        loads = {name: float(s["comparison_load"]) for name, s in
                 json.loads(Path(args.results).read_text())["scenarios"].items()}
        multiples = [float(x) for x in args.multiples.split(",")]
        if args.scenarios:
            wanted = args.scenarios.split(",")
            unknown = sorted(set(wanted) - set(loads))
            if unknown:
                raise DopdError(f"unknown scenario(s) {', '.join(unknown)}: "
                                f"known {', '.join(loads)}")
            loads = {n: loads[n] for n in wanted}
        if not multiples or min(multiples) <= 0 or args.workers < 1:
            raise DopdError("multiples must be > 0 and workers >= 1")
    except (OSError, ValueError, KeyError, DopdError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cells = [(n, m, v) for n in loads for m in multiples for v in args.variants]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        try:
            values = list(pool.map(attainment, [(n, loads[n] * m, v, args.traces_dir)
                                               for n, m, v in cells]))
        except DopdError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    got = dict(zip(cells, values, strict=True))
    print(f"attainment % at multiples of each scenario's comparison load ({args.results})")
    for i, v in enumerate(args.variants, 1):
        print(f"  v{i} = {v}")
    print(f"{'scenario':14s} {'x':>5s}" + "".join(f"{f'v{i}':>8s}"
                                                 for i in range(1, len(args.variants) + 1)))
    for n in loads:
        for m in multiples:
            print(f"{n:14s} {m:5.2f}" + "".join(f"{100 * got[(n, m, v)]:8.1f}"
                                                for v in args.variants))
    means = [100 * sum(got[(n, m, v)] for n in loads for m in multiples)
             / (len(loads) * len(multiples)) for v in args.variants]
    print(f"{'mean':20s}" + "".join(f"{x:8.1f}" for x in means))
    print(f"({len(cells)} simulations, {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
