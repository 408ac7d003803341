"""The token budget of MIXED instances (``dopd``'s ``mixtok=``): derived from the TPOT SLO and
the latency model, parsed, rejected when invalid, and applied by the scheduler of MIXED
instances in the simulator (only to steps that carry decodes)."""

from __future__ import annotations

import pytest
from policy_workloads import SLO_, constant

from dopd import perf
from dopd.control.flow.instances import scheduler_config
from dopd.control.policies.base import ClusterPolicy, PolicyContext, make_policy
from dopd.control.policies.mixed_budget import (
    CONTEXT,
    DECODES,
    MIN_TOKENS,
    mixed_prefill_tokens,
)
from dopd.control.policies.options import DopdOptions
from dopd.engine import BlockManager, Scheduler, SchedulerConfig, StepResult
from dopd.errors import DopdError
from dopd.sim.api import SimConfig
from dopd.sim.simulation import build_cluster
from dopd.types import SLO, Role

LATENCY = perf.build_latency_model("llama-3-8b", "a100-80gb")


def _extra(tokens: int) -> float:
    base = LATENCY.step_time(0, 0, 0, DECODES, DECODES * CONTEXT)
    return LATENCY.step_time(tokens, 2 * tokens * tokens, 1, DECODES, DECODES * CONTEXT) - base


@pytest.mark.parametrize("tpot", [0.02, 0.05, 0.1, 0.2])
def test_the_budget_is_the_largest_chunk_within_the_share_of_the_slo(tpot: float) -> None:
    tokens = mixed_prefill_tokens(LATENCY, tpot, 8192, share=0.5)
    assert MIN_TOKENS <= tokens <= 8192
    if tokens > MIN_TOKENS:
        assert _extra(tokens) <= 0.5 * tpot
    if tokens < 8192:
        assert _extra(2 * tokens) > 0.5 * tpot


def test_the_budget_grows_with_the_slo_and_the_share_up_to_the_cluster_budget() -> None:
    by_slo = [mixed_prefill_tokens(LATENCY, t, 8192) for t in (0.01, 0.05, 0.2, 5.0)]
    assert by_slo == sorted(by_slo) and by_slo[0] == MIN_TOKENS and by_slo[-1] == 8192
    assert mixed_prefill_tokens(LATENCY, 0.1, 8192, share=0.25) \
        <= mixed_prefill_tokens(LATENCY, 0.1, 8192, share=1.0)
    assert mixed_prefill_tokens(LATENCY, 1.0, 1024) == 1024
    assert mixed_prefill_tokens(LATENCY, 0.001, 64) == 64
    with pytest.raises(DopdError):
        mixed_prefill_tokens(LATENCY, 0.0, 8192)


def test_mixtok_is_parsed_with_the_hybrid() -> None:
    assert DopdOptions.parse("").mixed_tokens == "step"
    assert DopdOptions.parse("mixtok=auto").mixed_tokens == "auto"
    assert DopdOptions.parse("mixtok=512").mixed_tokens == 512
    assert DopdOptions.parse("mixtok=off").mixed_tokens is None
    assert DopdOptions.parse("mixshare=0.25").mixed_share == 0.25
    assert DopdOptions.parse("nohybrid").mixed_tokens is None


@pytest.mark.parametrize("spec", ["mixtok=0", "mixtok=x", "mixtok=-5", "nohybrid:mixtok=512",
                                  "mixshare=0", "mixshare=y", "veto=maybe",
                                  "nohybrid:veto=on"])
def test_bad_mixtok_options_are_clear_errors(spec: str) -> None:
    with pytest.raises(DopdError):
        DopdOptions.parse(spec)


def _context(tpot: float = 0.05) -> PolicyContext:
    config = SimConfig(instances=4)
    return PolicyContext(config=config, latency=LATENCY, slo=SLO(0.5, tpot), seed=0,
                         kv_blocks=10_000)


def test_the_policy_derives_or_takes_the_budget() -> None:
    auto = make_policy("dopd:mixtok=auto", _context(0.05))
    assert isinstance(auto, ClusterPolicy)
    assert auto.mixed_prefill_tokens == mixed_prefill_tokens(LATENCY, 0.05, 8192)
    fixed = make_policy("dopd:mixtok=300", _context())
    assert isinstance(fixed, ClusterPolicy) and fixed.mixed_prefill_tokens == 300
    for spec in ("dopd:mixtok=off", "dopd:nohybrid", "colocated"):
        policy = make_policy(spec, _context())
        assert isinstance(policy, ClusterPolicy) and policy.mixed_prefill_tokens is None
        assert scheduler_config(policy, SchedulerConfig()) == SchedulerConfig()
    assert scheduler_config(fixed, SchedulerConfig()).mixed_prefill_tokens == 300


def test_the_simulator_gives_every_instance_the_budget() -> None:
    w = constant(5.0, (200, 1200), (20, 60), duration_s=10.0)
    cluster = build_cluster(w, SimConfig(instances=4), "dopd:mixtok=256", SLO_)
    assert {inst.sched.config.mixed_prefill_tokens for inst in cluster.instances} == {256}
    plain = build_cluster(w, SimConfig(instances=4), "dopd:nohybrid", SLO_)
    assert {inst.sched.config.mixed_prefill_tokens for inst in plain.instances} == {None}


def _step(s: Scheduler) -> tuple[int, int]:
    plan = s.schedule()
    assert plan is not None
    s.complete(plan, StepResult(plan.step_id, 0.01, (0,) * len(plan.sampling_ids), ()))
    return plan.prefill_new_tokens, len(plan.decode_ids)


@pytest.mark.parametrize("role", [Role.MIXED, Role.PREFILL])
def test_a_mixed_step_with_decodes_takes_at_most_the_budget(role: Role) -> None:
    config = SchedulerConfig(max_batched_tokens=2048, mixed_prefill_tokens=256, watermark=0.0)
    s = Scheduler(config, BlockManager(4000, 16, 0.0), role)
    s.add_request(1, 3000, 50)
    assert _step(s) == (2048, 0)  # no decode runs: the whole budget
    if role == Role.PREFILL:
        # a prefill instance holds its prompts for hand-off: the cap never applies
        assert _step(s) == (952, 0)
        return
    assert _step(s) == (952, 0)
    s.add_request(2, 3000, 50)
    prefill, decodes = _step(s)
    assert decodes == 1 and prefill == 256
