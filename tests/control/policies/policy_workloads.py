"""Seeded synthetic workloads and helpers for the cluster-policy tests (imported by name)."""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from dopd.sim.api import SimConfig, SimResult
from dopd.sim.simulation import build_cluster, collect_result
from dopd.types import SLO, RequestState, Role
from dopd.workload import Workload

SLO_ = SLO(ttft_s=0.5, tpot_s=0.05)

Columns = tuple[np.ndarray, np.ndarray, np.ndarray]


def poisson(n: int, rate: float, prompt: tuple[int, int], output: tuple[int, int], seed: int,
            start_s: float = 0.0) -> Columns:
    """``n`` Poisson arrivals at ``rate``/s from ``start_s``, uniform integer lengths."""
    rng = np.random.default_rng(seed)
    arrival = start_s + np.concatenate(([0.0], np.cumsum(rng.exponential(1 / rate, n - 1))))
    return (arrival, rng.integers(prompt[0], prompt[1] + 1, n),
            rng.integers(output[0], output[1] + 1, n))


def merge(*parts: Columns) -> Workload:
    return Workload.from_arrays("test", *(np.concatenate(cols)
                                          for cols in zip(*parts, strict=True)))


def constant(rate: float, prompt: tuple[int, int], output: tuple[int, int],
             duration_s: float = 120.0, seed: int = 3) -> Workload:
    """A stationary load: one length mix at one rate."""
    return merge(poisson(int(rate * duration_s), rate, prompt, output, seed))


def mix_shift(duration_s: float = 90.0) -> Workload:
    """Prefill-heavy (long prompts, short outputs, 6 req/s) for ``duration_s``, then
    decode-heavy (short prompts, long outputs, 25 req/s) as long: on 4 instances the first
    phase wants 3 prefill instances and the second 1 to 2."""
    a = poisson(int(6 * duration_s), 6.0, (3000, 6000), (10, 50), seed=1)
    b = poisson(int(25 * duration_s), 25.0, (100, 300), (300, 700), seed=2, start_s=duration_s)
    return merge(a, b)


def switches(result: SimResult) -> list[tuple[float, Role]]:
    """(time, new role) of every role switch the run ordered, in order."""
    return [(float(d["t"]), Role(d["role"])) for d in result.decisions
            if d.get("action") == "SwitchRole"]


def reversals(moves: list[tuple[float, Role]]) -> int:
    """How many times consecutive switches go opposite ways (prefill <-> decode)."""
    roles = [role for _, role in moves]
    return sum(1 for a, b in pairwise(roles) if a != b)


def run_checked(workload: Workload, instances: int, spec: str = "dopd",
                slo: SLO = SLO_) -> SimResult:
    """Run and assert that no request was lost: every request ended, none aborted, the only
    rejections are the router's admission control (at arrival, never by a switch), and no KV,
    hand-off or transfer is left anywhere."""
    cluster = build_cluster(workload, SimConfig(instances=instances), spec, slo)
    cluster.run()
    cluster.check()
    result = collect_result(cluster, 0.0)
    assert not np.any(result.state == int(RequestState.ABORTED))
    rejected = np.flatnonzero(result.state == int(RequestState.REJECTED))
    assert all(result.reason[int(i)].startswith("admission control") for i in rejected)
    assert np.count_nonzero(result.state == int(RequestState.FINISHED)) + rejected.size \
        == len(workload)
    return result
