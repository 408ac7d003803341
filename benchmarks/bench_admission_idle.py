"""Admission control at light load: does it reject only what cannot make it?

Runs a long-context window (the Mooncake conversation trace at 0.25x its rate, the issue-11
long-context case: SLO TTFT 5 s, TPOT 100 ms, Llama-3-8B on 8 x A100-80GB) under each policy
with the ``length-aware`` router, and for every rejected request computes its TTFT on an idle
instance of the pool with the simulated hardware (the truth: its prefill alone plus the KV
hand-off). A rejection is *wrong* when that idle TTFT is within the TTFT SLO. Printed side by
side per policy: attainment, rejected, wrongly rejected, role switches per instance-hour.

    PYTHONPATH=src python3 benchmarks/bench_admission_idle.py [--duration 1200] [--scale 0.25]
"""

from __future__ import annotations

import argparse

import numpy as np

from dopd.control.cluster_models import build_models
from dopd.control.routing.predict import request_cost_s
from dopd.control.routing.router import RouterContext
from dopd.metrics.summary import summarize_result
from dopd.sim.api import SimConfig
from dopd.sim.simulation import run_simulation
from dopd.types import SLO, RequestState
from dopd.workload.traces import load_trace

POLICIES = ("colocated", "static:best", "dopd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default="mooncake")
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--duration", type=float, default=1200.0)
    parser.add_argument("--policies", default=",".join(POLICIES))
    args = parser.parse_args()
    slo = SLO(ttft_s=5.0, tpot_s=0.1)
    config = SimConfig(instances=8, router="length-aware")
    workload = load_trace(args.trace).scale_rate(args.scale).cut(duration_s=args.duration)
    models = build_models(config)
    truth = RouterContext.of(config, models, slo)
    hours = workload.duration_s / 3600.0
    print(f"{args.trace} at {args.scale:g}x, {len(workload)} requests over "
          f"{workload.duration_s:.0f} s; SLO TTFT {slo.ttft_s:g} s, TPOT {slo.tpot_s:g} s")
    print(f"{'policy':<22}{'attain %':>9}{'rejected':>9}{'wrong':>7}{'switch/inst-h':>15}")
    for policy in args.policies.split(","):
        result = run_simulation(workload, config, policy, slo)
        summary = summarize_result(result, slo)
        rejected = np.flatnonzero(result.state == int(RequestState.REJECTED))
        wrong = sum(
            1 for i in rejected
            if request_cost_s(truth, int(result.prompt_tokens[i]))
            + truth.transfer_s(int(result.prompt_tokens[i])) <= slo.ttft_s)
        rate = result.switches / (config.instances * hours)
        print(f"{policy:<22}{100 * summary.attainment:>9.1f}{rejected.size:>9d}{wrong:>7d}"
              f"{rate:>15.1f}")


if __name__ == "__main__":
    main()
