"""Measured costs of dopd.workload and dopd.metrics.summary (prints figures; no assertions).

Run: python3 benchmarks/bench_workload.py
"""

from __future__ import annotations

import time

import numpy as np

from dopd.bench import summarize_arrays
from dopd.types import SLO, RequestState
from dopd.workload import Gamma, LogNormal, OnOff, load_trace, synthetic_workload

FILES = ["azure-conv", "azure-code", "mooncake", "sharegpt"]  # datasets shipped in dopd.data


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    for name in FILES:
        rows = len(load_trace(name))
        t = best_of(lambda p=name: load_trace(p))
        print(f"load {name:12s} {rows:6d} rows  {t * 1e3:7.1f} ms")
    lengths = LogNormal(1000, 1.2, 200, 1.0)
    for arrival in (Gamma(20.0, 3.0), OnOff(40.0, 2.0, 10.0, 30.0)):
        t = best_of(lambda a=arrival: synthetic_workload(a, lengths, num_requests=77_000, seed=1))
        print(f"synthetic 77k requests {type(arrival).__name__:6s} {t * 1e3:7.1f} ms")
    w = synthetic_workload(Gamma(20.0, 3.0), lengths, num_requests=77_000, seed=1)
    t = best_of(lambda: w.scale_rate(2).cut(duration_s=600))
    print(f"scale_rate+cut 77k  {t * 1e3:7.2f} ms")
    print(f"iterate 77k RequestSpec {best_of(lambda: sum(1 for _ in w.requests())) * 1e3:7.1f} ms")
    rng = np.random.default_rng(0)
    first = w.arrival_s + rng.exponential(0.5, len(w))
    finish = first + rng.exponential(0.03, len(w)) * (w.output_tokens - 1)
    state = np.full(len(w), int(RequestState.FINISHED))
    t = best_of(lambda: summarize_arrays(arrival_s=w.arrival_s, first_token_s=first,
                                         finish_s=finish, output_tokens=w.output_tokens,
                                         state=state, slo=SLO(1.0, 0.05)))
    print(f"summarize_arrays 77k {t * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
