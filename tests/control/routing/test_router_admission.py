"""Admission control of the length-aware router rejects only what cannot make it (issue 11):
never while an instance of the pool is idle, always what misses even on an idle instance, and
on a light seeded load no rejected request would have met its TTFT SLO on an idle instance."""

from __future__ import annotations

import numpy as np

from dopd.control.cluster_models import build_models
from dopd.control.routing import LengthAwareRouter
from dopd.control.routing.predict import request_cost_s
from dopd.control.routing.router import RouterContext, make_router
from dopd.engine import SchedulerConfig
from dopd.sim.api import SimConfig
from dopd.sim.instance import SimInstance
from dopd.sim.simulation import run_simulation
from dopd.types import SLO, InstanceState, RequestState, Role
from dopd.workload.base import Workload

CONFIG = SimConfig(instances=4)
MODELS = build_models(CONFIG)
SLO_ = SLO(ttft_s=1.0, tpot_s=0.05)
CONTEXT = RouterContext.of(CONFIG, MODELS, SLO_)


def router(options: str = "") -> LengthAwareRouter:
    built = make_router("length-aware" + (":" + options if options else ""), CONTEXT)
    assert isinstance(built, LengthAwareRouter)
    return built


def instance(index: int, role: Role) -> SimInstance:
    config = SchedulerConfig(max_batched_tokens=CONFIG.max_batched_tokens,
                             watermark=MODELS.watermark)
    return SimInstance(index, role, InstanceState.ACTIVE, 0.0, config, MODELS.kv_blocks,
                       CONFIG.block_size)


def test_a_congested_placement_goes_to_an_idle_decode_instance_not_away() -> None:
    r = router("bypass=off")
    a, b = instance(0, Role.PREFILL), instance(1, Role.PREFILL)
    for rid in range(24):
        (a if rid % 2 else b).sched.add_request(rid, 8000, 2)
    idle = instance(2, Role.DECODE)
    placement = r.place(0.0, 1000, 10, [a, b], [idle], admit=True)
    assert not placement.reject and placement.instance is idle and placement.bypass
    assert placement.predicted_ttft_s <= SLO_.ttft_s
    assert r.rescued == 1 and r.rejected == 0
    # The same pool with no idle instance: rejected (with ``pool_k``, only as the prefill
    # backlog shared evenly is still far past the SLO).
    idle.sched.add_request(99, 8000, 2)
    late = r.place(0.0, 1000, 10, [a, b], [idle], admit=True)
    assert late.instance is None and "no idle instance" in late.reject
    pooled = router("bypass=off,pool_k=2").place(0.0, 1000, 10, [a, b], [idle], admit=True)
    assert pooled.instance is None and "backlog shared" in pooled.reject


def test_a_request_that_misses_even_on_an_idle_instance_is_rejected_as_such() -> None:
    r = router()
    idle = [instance(i, Role.MIXED) for i in range(2)]
    huge = 60_000
    assert request_cost_s(CONTEXT, huge) > 1.1 * SLO_.ttft_s
    placement = r.place(0.0, huge, 10, idle, idle, admit=True)
    assert placement.instance is None and "even on an idle instance" in placement.reject
    # Within idle_margin of the limit it is served (the prediction may be pessimistic).
    assert not router("idle_margin=100").place(0.0, huge, 10, idle, idle, admit=True).reject


def test_light_load_rejects_nothing_an_idle_instance_would_serve_in_time() -> None:
    """With ``pool_k`` (off by default: it costs max goodput near capacity)."""
    rng = np.random.default_rng(0)
    n = 300
    arrivals = np.cumsum(rng.exponential(1.0 / 2.0, n))  # 2 req/s: light for 4 instances
    prompts = np.minimum(rng.lognormal(np.log(3000), 1.2, n), 60_000).astype(np.int64)
    outputs = rng.integers(16, 200, n)
    workload = Workload.from_arrays("light", arrivals, prompts, outputs)
    slo = SLO(ttft_s=1.0, tpot_s=0.1)
    config = SimConfig(instances=4, router="length-aware:pool_k=2")
    for policy in ("colocated", "dopd"):
        result = run_simulation(workload, config, policy, slo, seed=0)
        rejected = np.flatnonzero(result.state == int(RequestState.REJECTED))
        assert rejected.size > 0  # the long tail cannot make 1 s anywhere
        for i in rejected:
            p = int(result.prompt_tokens[i])
            assert request_cost_s(CONTEXT, p) > slo.ttft_s, (policy, i, p, result.reason[int(i)])
