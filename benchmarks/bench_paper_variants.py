"""What-if runs on one scenario of an experiment suite: policy variants side by side at one load.

Runs each ``SPEC`` or ``SPEC@ROUTER`` (the policy with another router, e.g. a baseline with
dopd's length-aware scheduling) on the scenario's cluster and workload at the given load
(``1`` = the suite's load axis unit; the report of ``dopd experiment`` gives each scenario's
comparison load) and prints attainment, the rejected share, the honest P90 TTFT and P90 TPOT
(``inf``: the P90 lands on a request that never got there) and the served-only P90 TTFT, in one
run::

    python3 benchmarks/bench_paper_variants.py sharegpt-70b 1.0 colocated dopd \
        colocated@length-aware static:3:3@length-aware dopd:mixed
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from dopd.bench.report import write_json
from dopd.data import TRACES_DIR
from dopd.errors import DopdError
from dopd.experiments.sources import scenario_workload
from dopd.experiments.suites import get_suite
from dopd.metrics.summary import summarize_result
from dopd.sim.simulation import run_simulation


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", help="scenario name of the suite (e.g. conv-8b)")
    ap.add_argument("load", type=float, help="load on the suite's axis (e.g. 1.0)")
    ap.add_argument("variants", nargs="+", help="SPEC or SPEC@ROUTER")
    ap.add_argument("--suite", default="paper")
    ap.add_argument("--traces-dir", default=str(TRACES_DIR))
    ap.add_argument("--json", default=None, help="write the rows to this file")
    args = ap.parse_args()
    try:
        scenario = get_suite(args.suite).scenario(args.scenario)
        if not args.load > 0:
            raise DopdError(f"load must be > 0, got {args.load}")
        workload = scenario_workload(scenario, args.load, Path(args.traces_dir), 0)
    except DopdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.scenario} at load {args.load:g}: {len(workload)} requests, SLO TTFT "
          f"{scenario.slo.ttft_s:g} s, TPOT {scenario.slo.tpot_s * 1000:g} ms")
    print(f"{'variant':48s} {'attain %':>9s} {'rejected %':>10s} {'P90 TTFT s':>11s} "
          f"{'P90 TPOT ms':>12s} {'served P90 TTFT s':>18s} {'wall s':>7s}")
    rows = []
    for variant in args.variants:
        spec, _, router = variant.partition("@")
        config = dataclasses.replace(scenario.cluster, router=router) if router \
            else scenario.cluster
        start = time.perf_counter()
        try:
            result = run_simulation(workload, config, spec, scenario.slo, 0)
        except DopdError as exc:
            print(f"error: {variant}: {exc}", file=sys.stderr)
            return 2
        s = summarize_result(result, scenario.slo)
        wall = time.perf_counter() - start
        ttft = s.ttft_p90 if s.ttft_p90 is not None else float("nan")  # inf: a miss
        tpot = s.tpot_p90 if s.tpot_p90 is not None else float("nan")
        served = s.ttft_p90_served if s.ttft_p90_served is not None else float("nan")
        print(f"{variant:48s} {100 * s.attainment:9.1f} {100 * s.rejected_share:10.1f} "
              f"{ttft:11.3f} {1000 * tpot:12.1f} {served:18.3f} {wall:7.1f}", flush=True)
        rows.append({"variant": variant, "attainment": s.attainment,
                     "rejected_share": s.rejected_share, "ttft_p90_s": s.ttft_p90,
                     "tpot_p90_s": s.tpot_p90, "ttft_p90_served_s": s.ttft_p90_served,
                     "tpot_p90_served_s": s.tpot_p90_served})
    if args.json:
        write_json(args.json, {"scenario": args.scenario, "load": args.load, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
