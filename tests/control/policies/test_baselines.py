"""The ``reactive`` and ``sla-planner`` baselines: their rules, in the simulator."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
from policy_workloads import constant, mix_shift, reversals, switches

from dopd.control.cluster_models import build_models
from dopd.control.policies.base import PolicyContext, make_policy
from dopd.control.policies.reactive import ReactivePolicy
from dopd.control.policies.sla_planner import SlaPlannerPolicy
from dopd.errors import DopdError
from dopd.sim.api import SimConfig
from dopd.sim.simulation import build_cluster, collect_result, run_simulation
from dopd.types import SLO, RequestState, Role

SLO_ = SLO(ttft_s=0.5, tpot_s=0.05)


def _context(instances: int = 4, slo: SLO | None = SLO_) -> PolicyContext:
    config = SimConfig(instances=instances)
    models = build_models(config)
    return PolicyContext(config, models.latency, slo, 0, models.kv_blocks)


# ---------------------------------------------------------------------- reactive
def test_reactive_moves_towards_prefill_under_long_prompts_with_cooldown() -> None:
    w = constant(6.0, (3000, 6000), (10, 50), duration_s=90.0)
    cluster = build_cluster(w, SimConfig(instances=4), "reactive:cooldown=20", SLO_)
    cluster.run()
    cluster.check()
    result = collect_result(cluster, 0.0)
    moves = switches(result)
    assert moves and all(role == Role.PREFILL for _, role in moves), moves
    assert all(b - a >= 20.0 for (a, _), (b, _) in pairwise(moves))
    assert result.timeline.prefill_instances[-1] == 3  # one decode instance is kept
    assert np.all(result.state == int(RequestState.FINISHED))


def test_reactive_follows_a_mix_shift_to_decode() -> None:
    result = run_simulation(mix_shift(), SimConfig(instances=4), "reactive", SLO_)
    moves = switches(result)
    assert any(role == Role.DECODE and t > 90.0 for t, role in moves), moves
    assert reversals(moves) <= 1
    assert result.timeline.decode_instances[-1] >= 2
    assert np.all(result.state == int(RequestState.FINISHED))


def test_reactive_options() -> None:
    policy = make_policy("reactive:init=1/3:interval=2", _context())
    assert isinstance(policy, ReactivePolicy) and policy.interval_s == 2.0
    assert policy.initial_roles(4) == [Role.PREFILL] + [Role.DECODE] * 3
    for bad in ("reactive:init=4/4", "reactive:hot=-1", "reactive:flag", "reactive:alpha=2"):
        with pytest.raises(DopdError):
            make_policy(bad, _context())
    with pytest.raises(DopdError, match="needs an SLO"):
        make_policy("reactive", _context(slo=None))


# ---------------------------------------------------------------------- sla-planner
def test_sla_planner_replicas_follow_the_dynamo_formula() -> None:
    p = make_policy("sla-planner", _context(8))
    assert isinstance(p, SlaPlannerPolicy)
    rate, isl, osl = 10.0, 2000.0, 200.0
    ttft = p.prefill_ttft(isl)
    assert p.prefill_throughput(isl) == pytest.approx(isl / ttft)
    need_p = math.ceil(rate * isl / (isl / ttft))
    ctx = isl + osl / 2
    thpt = p.decode_throughput(SLO_.tpot_s, ctx)
    need_d = math.ceil(rate * osl / thpt)
    # The best throughput per instance is at the largest batch within the ITL target.
    batches = np.arange(1.0, 257.0)
    steps = p.inst.decode_step(batches, ctx)
    fits = (steps <= SLO_.tpot_s) & (batches <= p.inst.kv_batch_limit(ctx))
    assert thpt == pytest.approx(float(np.max(batches[fits] / steps[fits])))
    got = p.replicas(rate, isl, osl)
    # Pinned to the budget of 8: both counts scaled in proportion.
    assert got.total == 8
    assert got.prefill == max(1, round(need_p * 8 / (need_p + need_d)))
    elastic = make_policy("sla-planner:elastic", _context(8))
    assert isinstance(elastic, SlaPlannerPolicy)
    low = elastic.replicas(rate, isl, osl)
    assert (low.prefill, low.decode) == (need_p, need_d) and low.total < 8
    # Over the budget it scales down proportionally (Dynamo's rule) with >= 1 each.
    high = elastic.replicas(20 * rate, isl, osl)
    assert high.total == 8 and high.prefill >= 1 and high.decode >= 1
    # The TTFT correction only ever lowers the prefill demand (min(1, p)).
    elastic.p_corr = 5.0
    assert elastic.replicas(rate, isl, osl) == low
    elastic.p_corr = 0.5
    assert elastic.replicas(rate, isl, osl).prefill == math.ceil(0.5 * rate * isl * ttft / isl)


def test_sla_planner_scales_replicas_without_role_switches() -> None:
    result = run_simulation(mix_shift(), SimConfig(instances=4), "sla-planner:interval=20",
                            SLO_)
    kinds = {d.get("action") for d in result.decisions}
    assert result.switches == 0 and "SwitchRole" not in kinds
    assert {"AddInstance", "RemoveInstance"} <= kinds
    tl = result.timeline
    assert np.all(tl.prefill_instances + tl.decode_instances + tl.mixed_instances <= 4)
    assert np.all(result.state == int(RequestState.FINISHED))
    plans = [d for d in result.decisions if d.get("kind") == "decision"]
    assert plans and all(d["policy"] == "sla-planner:interval=20" for d in plans)


def test_sla_planner_options() -> None:
    assert make_policy("sla-planner:forecast=constant:nocorrection", _context()).name == \
        "sla-planner:forecast=constant:nocorrection"
    for bad in ("sla-planner:interval=-5", "sla-planner:min_endpoint=3",
                "sla-planner:forecast=nope", "sla-planner:fast"):
        with pytest.raises(DopdError):
            make_policy(bad, _context())
