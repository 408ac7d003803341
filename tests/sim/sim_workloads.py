"""Seeded synthetic workloads for the simulator tests (imported by name: not a conftest)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dopd.workload import Workload

MakeWorkload = Callable[..., Workload]
Columns = tuple[np.ndarray, np.ndarray, np.ndarray]


def poisson_columns(n: int, rate: float, prompt: tuple[int, int], output: tuple[int, int],
                    seed: int = 0, start_s: float = 0.0) -> Columns:
    """Arrival times (first at ``start_s``) and uniform integer lengths of ``n`` Poisson
    arrivals at ``rate``/s."""
    rng = np.random.default_rng(seed)
    arrival = start_s + np.concatenate(([0.0], np.cumsum(rng.exponential(1 / rate, n - 1))))
    return (arrival, rng.integers(prompt[0], prompt[1] + 1, n),
            rng.integers(output[0], output[1] + 1, n))


def merge(*parts: Columns) -> Workload:
    """One workload with the requests of all parts, merged by arrival time (the first at 0)."""
    return Workload.from_arrays("merged", *(np.concatenate(cols) for cols in zip(*parts,
                                                                                  strict=True)))


def poisson_workload(n: int, rate: float, prompt: tuple[int, int], output: tuple[int, int],
                     seed: int = 0) -> Workload:
    return merge(poisson_columns(n, rate, prompt, output, seed))
