"""Simulator speed on the Azure LLM conversation trace (prints measured figures).

Cases (llama-3-8b on a100-80gb, static disaggregation, half prefill / half decode):

- ``x1``: the whole trace (19,366 requests, 58 min) on 8 instances; target <= 5 s wall.
- ``x4``: the trace at 4x its rate for its whole hour: four copies, each time-compressed 4x,
  back to back (77,464 requests, about 22 req/s) on 16 instances; target <= 20 s wall.

Each case runs in its own process pinned to one CPU core, so its peak RSS (target <= 1.5 GB) is
its own; CPU time is printed too, as wall time suffers when other jobs share the core. Usage::

    python3 benchmarks/bench_simulator.py            # both cases
    python3 benchmarks/bench_simulator.py --case x4 --policy colocated --profile
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import subprocess
import sys
import time

import numpy as np

TRACE = "azure-conv"  # shipped in dopd.data
CASES = {"x1": (1, 8, 5.0), "x4": (4, 16, 20.0)}  # rate factor, instances, target wall s


def load(factor: int, trace: str):  # -> Workload
    """The trace at ``factor`` x its rate over its whole span (``factor`` compressed copies)."""
    from dopd.workload import Workload, load_workload

    base = load_workload(trace)
    if factor == 1:
        return base
    fast = base.scale_rate(factor)
    span = base.duration_s / factor
    arrival = np.concatenate([fast.arrival_s + k * span for k in range(factor)])
    return Workload(f"{base.name}-rate-x{factor}", arrival, np.tile(fast.prompt_tokens, factor),
                    np.tile(fast.output_tokens, factor))


def run_case(case: str, policy: str | None, trace: str, profile: bool) -> dict[str, object]:
    from dopd.metrics.summary import summarize_result
    from dopd.sim.api import SimConfig
    from dopd.sim.simulation import run_simulation
    from dopd.types import SLO

    factor, instances, target = CASES[case]
    workload = load(factor, trace)
    policy = policy or f"static:{instances // 2}:{instances // 2}"
    config = SimConfig(model="llama-3-8b", gpu="a100-80gb", instances=instances)
    slo = SLO(ttft_s=1.0, tpot_s=0.05)
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    cpu_started = time.process_time()
    if profiler is not None:
        profiler.enable()
    result = run_simulation(workload, config, policy, slo=slo)
    if profiler is not None:
        profiler.disable()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    summary = summarize_result(result, slo)
    if profiler is not None:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(20)
    return {
        "case": case, "policy": result.policy, "instances": instances,
        "requests": len(workload), "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
        "target_wall_s": target,
        "sim_s": round(result.sim_end_s, 1),
        "sim_s_per_wall_s": round(result.sim_end_s / wall, 1),
        "events": result.events, "events_per_request": round(result.events / len(workload), 2),
        "us_per_request": round(wall / len(workload) * 1e6, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "attainment": round(summary.attainment, 4), "ttft_p90_s": summary.ttft_p90,
        "tpot_p90_s": summary.tpot_p90,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), help="one case, in this process")
    parser.add_argument("--policy", help="cluster policy (default: static half/half)")
    parser.add_argument("--trace", default=TRACE, help="dataset name or trace file")
    parser.add_argument("--profile", action="store_true", help="cProfile top 20 on stderr")
    args = parser.parse_args()
    if args.case:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        print(json.dumps(run_case(args.case, args.policy, args.trace, args.profile)))
        return 0
    ok = True
    for case in ("x1", "x4"):
        cmd = [sys.executable, __file__, "--case", case, "--trace", str(args.trace)]
        if args.policy:
            cmd += ["--policy", args.policy]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        met = row["wall_s"] <= row["target_wall_s"] and row["peak_rss_mb"] <= 1536
        ok &= met
        print(f"{case}: {row['requests']} requests on {row['instances']} instances "
              f"({row['policy']}): wall {row['wall_s']} s (target {row['target_wall_s']} s, "
              f"CPU {row['cpu_s']} s), "
              f"{row['sim_s_per_wall_s']} sim-s/wall-s, {row['events']} events "
              f"({row['events_per_request']}/request, {row['us_per_request']} us/request), "
              f"peak RSS {row['peak_rss_mb']} MB, attainment {row['attainment']}"
              f" -> {'OK' if met else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
