"""Cluster policies head to head: attainment, P90 latencies and max goodput (prints figures).

Setting (the issue's): llama-3-8b on a100-80gb, 8 instances, TTFT SLO 0.5 s, TPOT SLO 0.1 s and
0.05 s, attainment target 90 %. Workloads:

- ``conv`` / ``code``: the Azure LLM 2023 conversation and code traces, whole;
- ``sharegpt-shift``: ShareGPT lengths with bursty Gamma arrivals (CV 2, 10 req/s, 600 s);
  the length mix shifts at 300 s from the prefill-heavy half of the ShareGPT pairs (prompt /
  output ratio above the median: prompt mean 3770, output 344) to the decode-heavy half
  (prompt 910, output 533);
- ``sharegpt-shift3``: the same two halves of ShareGPT, but the decode-heavy phase comes at
  three times the rate (Gamma CV 2 at 8 req/s for 300 s, then 24 req/s for 300 s): with
  shorter prompts a cluster serves more requests, and the decode side, not the prefill side,
  becomes the bottleneck, so the best split differs between the phases.

For each workload and SLO it finds every policy's max goodput (the rate scale at which
attainment stays >= 90 %, by bisection as ``dopd simulate --max-goodput``), takes as the
reference load the highest scale at which a baseline (``colocated`` or ``static:best``) still
reaches 90 %, and runs every policy there. It prints, per case, the table and the issue's
targets: dopd's max goodput over the best of colocated and static:best (target >= 1.5x), its
P90 TTFT and TPOT change against that baseline at the reference load (targets -67 % and
-22 %), and its attainment there (target >= 99 %). Usage::

    python3 benchmarks/bench_policies.py                      # everything (about an hour)
    python3 benchmarks/bench_policies.py --workloads conv --tpot 0.1 --jobs 2
    python3 benchmarks/bench_policies.py --policies colocated,dopd,dopd:noforecast --json out.json
    python3 benchmarks/bench_policies.py --policies static:best@length-aware,dopd:nolength

A policy ``SPEC@ROUTER`` runs ``SPEC`` with the router ``ROUTER`` instead of its own (e.g. a
baseline with dopd's length-aware scheduling, to separate the split's gain from the router's).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

POLICIES = ("colocated", "static:best", "reactive", "sla-planner", "dopd")
BASELINES = ("colocated", "static:best")
HI_GUESS = {"conv": 8.0, "code": 2.0, "sharegpt-shift": 1.0, "sharegpt-shift3": 1.0}


@functools.lru_cache(maxsize=4)
def workload(name: str):  # -> Workload
    """The named workload (see the module doc)."""
    from dopd.workload import (
        Empirical,
        Gamma,
        LengthTable,
        MixShift,
        Workload,
        load_lengths,
        load_trace,
        synthetic_workload,
    )

    if name in ("conv", "code"):
        return load_trace(f"azure-{name}")
    if name in ("sharegpt-shift", "sharegpt-shift3"):
        table = load_lengths("sharegpt")
        ratio = table.prompt_tokens / table.output_tokens
        heavy = ratio > np.median(ratio)
        a = Empirical(LengthTable("prefill-heavy", table.prompt_tokens[heavy],
                                  table.output_tokens[heavy]))
        b = Empirical(LengthTable("decode-heavy", table.prompt_tokens[~heavy],
                                  table.output_tokens[~heavy]))
        if name == "sharegpt-shift":
            return synthetic_workload(Gamma(10.0, 2.0), MixShift(a, b, 300.0),
                                      duration_s=600.0, seed=1, name=name)
        first = synthetic_workload(Gamma(8.0, 2.0), a, duration_s=300.0, seed=1)
        second = synthetic_workload(Gamma(24.0, 2.0), b, duration_s=300.0, seed=2)
        return Workload.from_arrays(
            name, np.concatenate([first.arrival_s, second.arrival_s + 300.0]),
            np.concatenate([first.prompt_tokens, second.prompt_tokens]),
            np.concatenate([first.output_tokens, second.output_tokens]))
    raise SystemExit(f"unknown workload {name!r}")


def _summary(name: str, tpot: float, policy: str, scale: float) -> dict[str, Any]:
    from dopd.metrics.summary import summarize_result
    from dopd.sim.api import SimConfig
    from dopd.sim.simulation import run_simulation
    from dopd.types import SLO

    slo = SLO(ttft_s=0.5, tpot_s=tpot, attainment=0.9)
    started = time.perf_counter()
    spec, _, router = policy.partition("@")
    config = SimConfig(instances=8, router=router or "auto")
    result = run_simulation(workload(name).scale_rate(scale), config, spec, slo)
    s = summarize_result(result, slo)
    label = result.policy + (f"@{router}" if router else "")
    return {"policy": label, "scale": scale, "attainment": s.attainment,
            "ttft_p90": s.ttft_p90, "tpot_p90": s.tpot_p90, "switches": result.switches,
            "gpu_seconds": result.gpu_seconds, "wall_s": time.perf_counter() - started}


def _max_goodput(name: str, tpot: float, policy: str) -> dict[str, Any]:
    from dopd.bench.goodput import max_goodput

    started = time.perf_counter()
    found = max_goodput(lambda k: _summary(name, tpot, policy, k)["attainment"], 0.9, 0.05,
                        HI_GUESS.get(name, 1.0), 0.02, 30)
    rate = workload(name).rate_rps
    return {"scale": found.rate_scale, "goodput_rps": found.rate_scale * rate,
            "runs": found.runs, "converged": found.converged, "monotone": found.monotone,
            "wall_s": time.perf_counter() - started}


def run_case(name: str, tpot: float, policies: list[str], jobs: int) -> dict[str, Any]:
    """Max goodput of every policy, then every policy at the reference load."""
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        found = dict(zip(policies, pool.map(_max_goodput, [name] * len(policies),
                                            [tpot] * len(policies), policies), strict=True))
        base = [found[p]["scale"] for p in BASELINES if p in found]
        reference = max(base) if base else 1.0
        at_ref = dict(zip(policies, pool.map(_summary, [name] * len(policies),
                                             [tpot] * len(policies), policies,
                                             [reference] * len(policies)), strict=True))
    return {"workload": name, "tpot_slo": tpot, "reference_scale": reference,
            "max_goodput": found, "at_reference": at_ref}


def _fmt(x: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return "-" if x is None else f"{x * scale:.{digits}f}"


def report(case: dict[str, Any]) -> None:
    """Print one case's table and the issue's targets."""
    mg, ref = case["max_goodput"], case["at_reference"]
    print(f"\n== {case['workload']}  TTFT 0.5 s / TPOT {case['tpot_slo']} s, reference load = "
          f"x{case['reference_scale']:.3g} (best baseline's max goodput scale)")
    print(f"{'policy':<26}{'maxgood rps':>12}{'scale':>8}{'att@ref':>9}{'ttft90':>9}"
          f"{'tpot90 ms':>10}{'switch':>7}{'runs':>5}")
    for policy in mg:
        g, r = mg[policy], ref[policy]
        print(f"{r['policy']:<26}{g['goodput_rps']:>12.2f}{g['scale']:>8.3f}"
              f"{r['attainment']:>9.4f}{_fmt(r['ttft_p90']):>9}{_fmt(r['tpot_p90'], 1e3, 1):>10}"
              f"{r['switches']:>7}{g['runs']:>5}")
    if "dopd" not in mg:
        return
    best = max((p for p in BASELINES if p in mg), key=lambda p: mg[p]["goodput_rps"],
               default=None)
    if best is None:
        return
    d, b = ref["dopd"], ref[best]
    ratio = mg["dopd"]["goodput_rps"] / max(mg[best]["goodput_rps"], 1e-9)

    def change(key: str) -> str:
        if d[key] is None or b[key] is None or b[key] <= 0:
            return "-"
        return f"{100 * (d[key] / b[key] - 1):+.1f}%"

    print(f"targets vs {b['policy']}: goodput x{ratio:.2f} (>= 1.5), P90 TTFT "
          f"{change('ttft_p90')} (-67%), P90 TPOT {change('tpot_p90')} (-22%), attainment "
          f"{100 * d['attainment']:.2f}% at the reference load (>= 99%)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default="conv,code,sharegpt-shift")
    p.add_argument("--tpot", default="0.1,0.05", help="TPOT SLOs in seconds, comma-separated")
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--json", default=None, help="write all figures to this JSON file")
    args = p.parse_args(argv)
    policies = [s.strip() for s in args.policies.split(",") if s.strip()]
    cases = []
    started = time.perf_counter()
    for name in args.workloads.split(","):
        for tpot in (float(t) for t in args.tpot.split(",")):
            case = run_case(name.strip(), tpot, policies, args.jobs)
            report(case)
            sys.stdout.flush()
            cases.append(case)
    print(f"\ntotal wall {time.perf_counter() - started:.0f} s")
    if args.json:
        from dopd.bench.report import to_jsonable  # a missed P90 (inf) is written null

        Path(args.json).write_text(json.dumps(to_jsonable(cases), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
