"""Measured speed of the P/D ratio solver, and its splits against brute force in the simulator.

Prints figures; no assertions. Target: one control-tick solve (forecast-style stationary
statistics) under 5 ms for a pool of up to 64 instances.

Run: python3 benchmarks/bench_ratio_solver.py [--sim]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np

from dopd.control.forecast.multi import LoadForecast
from dopd.control.ratio import InstanceModel, WorkloadStats, solve
from dopd.metrics.summary import summarize_result
from dopd.sim.api import SimConfig
from dopd.sim.simulation import run_simulation
from dopd.types import SLO
from dopd.workload import LogNormal, Poisson, load_trace, synthetic_workload

SLO_CHAT = SLO(ttft_s=1.0, tpot_s=0.05)


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[0] * 1e3, times[len(times) // 2] * 1e3


def speed() -> None:
    inst = InstanceModel.from_cluster_config(SimConfig())
    forecast = LoadForecast(rate=12.0, rate_upper=15.0, mean_in=1155.0, m2_in=2.6e6,
                            mean_out=211.0, m2_out=7.1e4)
    trace = WorkloadStats.from_workload(load_trace("azure-conv"))
    print("solve time (min / median ms):")
    for label, load, repeats in (("forecast", forecast, 50), ("conv trace", trace, 5)):
        for n in (8, 16, 32, 64, None):
            lo, med = timed(lambda n=n, load=load: solve(load, inst, SLO_CHAT, n), repeats)
            pool = "elastic" if n is None else f"N={n}"
            print(f"  {label:10s} {pool:8s} {lo:7.2f} / {med:7.2f}")


def versus_simulator() -> None:
    conv = load_trace("azure-conv")
    code = load_trace("azure-code")
    cases = [
        ("poisson 9 rps", synthetic_workload(Poisson(9.0), LogNormal(1500, 1.0, 250, 1.0),
                                             num_requests=3000, seed=1), 4, SLO(0.5, 0.03)),
        ("conv 600 s x3", conv.cut(duration_s=600).scale_rate(3), 4, SLO(1.0, 0.025)),
        ("conv 600 s x4", conv.cut(duration_s=600).scale_rate(4), 6, SLO(1.0, 0.02)),
        ("code 900 s x2", code.cut(duration_s=900).scale_rate(2), 4, SLO(1.0, 0.025)),
        ("code 1800 s", code.cut(duration_s=1800), 5, SLO(1.0, 0.025)),
        ("code 900 s x3", code.cut(duration_s=900).scale_rate(3), 6, SLO(2.0, 0.025)),
        ("mooncake 900 s", load_trace("mooncake").cut(duration_s=900), 8,
         SLO(10.0, 0.1)),
    ]
    errors, regrets = [], []
    for label, workload, n, slo in cases:
        config = SimConfig(instances=n)
        plan = solve(WorkloadStats.from_workload(workload),
                     InstanceModel.from_cluster_config(config), slo, n)
        sim = np.array([summarize_result(run_simulation(workload, config, f"static:{p}:{n - p}",
                                                        slo=slo), slo).attainment
                        for p in range(1, n)])
        pred = np.array([r.attainment for r in plan.splits])
        regret = float(sim.max() - sim[plan.n_prefill - 1])
        errors.extend(np.abs(pred - sim).tolist())
        regrets.append(regret)
        print(f"{label:14s} N={n} plan {plan.n_prefill}:{plan.n_decode} sim-best "
              f"{int(np.argmax(sim)) + 1}:{n - 1 - int(np.argmax(sim))} regret {regret:.3f}")
        print(f"    predicted {np.round(pred, 3)}\n    simulated {np.round(sim, 3)}")
    print(f"attainment error per split: mean {np.mean(errors):.3f}, max {np.max(errors):.3f}; "
          f"max regret {max(regrets):.3f}")


if __name__ == "__main__":
    speed()
    if "--sim" in sys.argv:
        versus_simulator()
