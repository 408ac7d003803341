"""Length-aware request scheduling on the shared traces: each feature on and off (prints figures).

For every case (a trace cut to its first ``duration`` seconds after rate scaling, a ``static:P:D``
split of llama-3-8b on a100-80gb, an SLO), runs the ``pd-pair`` router (the static baseline's
default), ``length-aware`` with every feature, ``length-aware`` with one feature off at a time,
``length-aware`` with all of them off (which must equal ``pd-pair``), and ``length-aware`` with
the long-prompt lane opening at p99 / p50 >= 8 instead of 16. Prints SLO attainment
(rejected requests count as misses), P90 TTFT and TPOT of the served requests, the share of
short prompts (at most the median length) whose first token came within the TTFT SLO,
rejections, bypasses and the wall time of each run. Usage::

    python3 benchmarks/bench_length_aware.py                 # all cases
    python3 benchmarks/bench_length_aware.py --case mooncake-6:2-x1.3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

CONV, CODE, MOONCAKE = "azure-conv", "azure-code", "mooncake"  # shipped in dopd.data

# name -> (trace, rate scale, duration s, policy, TTFT SLO s, TPOT SLO s)
CASES: dict[str, tuple[str, float, float, str, float, float]] = {
    "conv-2:2-x3": (CONV, 3.0, 1200.0, "static:2:2", 1.0, 0.05),
    "conv-2:2-x4": (CONV, 4.0, 1200.0, "static:2:2", 1.0, 0.05),
    "code-3:1-x1.5": (CODE, 1.5, 1200.0, "static:3:1", 1.0, 0.05),
    "code-3:1-x2": (CODE, 2.0, 1200.0, "static:3:1", 1.0, 0.05),
    "mooncake-5:3-x1": (MOONCAKE, 1.0, 1200.0, "static:5:3", 10.0, 0.1),
    "mooncake-6:2-x1.3": (MOONCAKE, 1.3, 1200.0, "static:6:2", 10.0, 0.1),
    "mooncake-6:2-x1.6": (MOONCAKE, 1.6, 1200.0, "static:6:2", 10.0, 0.1),
}

FEATURES = ("ttft", "order", "lane", "decode", "bypass", "admit")
_OFF = {"ttft": "ttft=off", "order": "order=fcfs", "lane": "lane=off", "decode": "decode=off",
        "bypass": "bypass=off", "admit": "admit=off"}
VARIANTS: tuple[tuple[str, str], ...] = (
    ("pd-pair", "pd-pair"),
    ("length-aware", "length-aware"),
    *((f"  -{f}", f"length-aware:{_OFF[f]}") for f in FEATURES),
    ("  all off", "length-aware:" + ",".join(_OFF[f] for f in FEATURES)),
    ("  lane at 8", "length-aware:lane_ratio=8"),  # the lane opens on smoother tails too
)


def run_case(name: str) -> list[dict[str, object]]:
    import numpy as np

    from dopd.metrics.summary import summarize_result
    from dopd.sim.api import SimConfig
    from dopd.sim.simulation import build_cluster, collect_result
    from dopd.types import SLO, RequestState
    from dopd.workload import load_workload

    trace, scale, duration, policy, ttft, tpot = CASES[name]
    workload = load_workload(trace).scale_rate(scale).cut(duration_s=duration)
    slo = SLO(ttft_s=ttft, tpot_s=tpot)
    instances = sum(int(x) for x in policy.split(":")[1:])
    rows = []
    for label, router in VARIANTS:
        started = time.perf_counter()
        cluster = build_cluster(workload, SimConfig(instances=instances, router=router), policy,
                                slo=slo)
        cluster.run()
        result = collect_result(cluster, time.perf_counter() - started)
        summary = summarize_result(result, slo)
        short = workload.prompt_tokens <= np.quantile(workload.prompt_tokens, 0.5)
        ttft_all = result.first_token_s - result.arrival_s
        met = (ttft_all <= ttft) & (result.state == int(RequestState.FINISHED))
        rows.append({
            "case": name, "variant": label.strip(), "router": router, "requests": len(workload),
            "attainment": round(summary.attainment, 4),
            "ttft_p90_s": round(summary.ttft_p90, 3), "tpot_p90_s": round(summary.tpot_p90, 4),
            "short_ttft_met": round(float(np.mean(met[short])), 4),
            "rejected": int(np.sum(result.state == int(RequestState.REJECTED))),
            "bypassed": int(getattr(cluster.router, "bypassed", 0)),
            "wall_s": round(result.wall_s, 2),
        })
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), action="append",
                        help="run only this case (repeatable)")
    parser.add_argument("--json", type=Path, help="also write every row as JSON")
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    for name in args.case or list(CASES):
        trace, scale, duration, policy, ttft, tpot = CASES[name]
        print(f"\n{name}: {trace} x{scale:g}, first {duration:g} s, {policy}, "
              f"SLO TTFT {ttft:g} s / TPOT {tpot:g} s")
        print(f"{'variant':16s} {'attain':>7s} {'P90 TTFT':>9s} {'P90 TPOT':>9s} "
              f"{'short<=SLO':>10s} {'rejected':>8s} {'bypassed':>8s} {'wall s':>6s}")
        for row in run_case(name):
            rows.append(row)
            print(f"{row['variant']:16s} {row['attainment']:7.4f} {row['ttft_p90_s']:9.3f} "
                  f"{row['tpot_p90_s']:9.4f} {row['short_ttft_met']:10.4f} {row['rejected']:8d} "
                  f"{row['bypassed']:8d} {row['wall_s']:6.2f}", flush=True)
    if args.json:
        from dopd.bench.report import to_jsonable  # a missed P90 (inf) is written null

        args.json.write_text(json.dumps(to_jsonable(rows), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
