"""The P/D solver's plans: monotonicity, the variance term, fixed pools, elastic pools."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dopd.control.forecast.multi import LoadForecast
from dopd.control.ratio import (
    CorrectionFactors,
    InstanceModel,
    SolverConfig,
    WorkloadStats,
    predict,
    solve,
)
from dopd.errors import DopdError
from dopd.sim.api import SimConfig
from dopd.types import SLO
from dopd.workload import load_trace

SLO_CHAT = SLO(ttft_s=1.0, tpot_s=0.05)


@pytest.fixture(scope="module")
def inst() -> InstanceModel:
    return InstanceModel.from_cluster_config(SimConfig())


def _moments(rate: float, isl: float = 1500.0, isl_cv: float = 1.0, osl: float = 250.0,
             osl_cv: float = 1.0) -> WorkloadStats:
    return WorkloadStats.from_moments(rate, isl, isl_cv, osl, osl_cv)


def test_more_load_needs_more_instances(inst: InstanceModel) -> None:
    plans = [solve(_moments(rate), inst, SLO_CHAT) for rate in (2.0, 8.0, 32.0, 64.0)]
    totals = [p.total for p in plans]
    assert totals == sorted(totals) and totals[-1] > totals[0]
    assert [p.n_prefill for p in plans] == sorted(p.n_prefill for p in plans)
    assert [p.n_decode for p in plans] == sorted(p.n_decode for p in plans)
    assert all(p.attainment >= SLO_CHAT.attainment for p in plans)


def test_longer_prompts_need_more_prefill(inst: InstanceModel) -> None:
    short = solve(_moments(10.0, isl=500.0), inst, SLO_CHAT)
    long = solve(_moments(10.0, isl=4000.0), inst, SLO_CHAT)
    assert long.n_prefill > short.n_prefill
    assert long.n_decode >= short.n_decode


def test_tighter_tpot_needs_more_decode(inst: InstanceModel) -> None:
    stats = _moments(40.0, isl=400.0, osl=600.0)
    loose = solve(stats, inst, SLO(ttft_s=1.0, tpot_s=0.05))
    tight = solve(stats, inst, SLO(ttft_s=1.0, tpot_s=0.014))
    assert tight.n_decode > loose.n_decode
    assert tight.b_star < loose.b_star


def test_prompt_length_variance_needs_more_prefill(inst: InstanceModel) -> None:
    steady = solve(_moments(12.0, isl=2000.0, isl_cv=0.3), inst, SLO_CHAT)
    spread = solve(_moments(12.0, isl=2000.0, isl_cv=2.5), inst, SLO_CHAT)
    assert spread.n_prefill > steady.n_prefill
    # The ablation (E[ISL]^2 in place of E[ISL^2]) cannot see the difference.
    ablation = solve(_moments(12.0, isl=2000.0, isl_cv=2.5), inst, SLO_CHAT,
                     config=SolverConfig(variance_term=False))
    assert ablation.n_prefill < spread.n_prefill
    assert ablation.n_prefill == solve(_moments(12.0, isl=2000.0, isl_cv=0.0), inst,
                                       SLO_CHAT).n_prefill


def test_fixed_pool_table_and_choice(inst: InstanceModel) -> None:
    stats = _moments(14.0)
    plan = solve(stats, inst, SLO_CHAT, instances=6)
    assert plan.mode == "fixed"
    assert [(r.n_prefill, r.n_decode) for r in plan.splits] == [(p, 6 - p) for p in range(1, 6)]
    best = max(r.attainment for r in plan.splits)
    assert plan.attainment >= best - SolverConfig().tie_tolerance
    assert plan.total == 6
    for row in plan.splits:
        assert row.goodput == pytest.approx(row.attainment * stats.rate)
        assert row.attainment == pytest.approx(row.ttft_attainment * row.tpot_attainment)
    # Splits that starve one side are predicted worse than the chosen one.
    assert plan.splits[0].attainment < plan.attainment
    one = predict(stats, inst, SLO_CHAT, plan.n_prefill, plan.n_decode)
    assert one.attainment == pytest.approx(plan.attainment, rel=1e-9)
    assert one.ttft_p90 == pytest.approx(plan.ttft_p90, rel=1e-9)
    assert solve(stats, inst, SLO_CHAT, instances=6) == plan  # deterministic


def test_overloaded_pool_still_splits_sensibly(inst: InstanceModel) -> None:
    plan = solve(_moments(500.0), inst, SLO_CHAT, instances=4)
    assert plan.attainment == 0.0
    assert "overloads" in plan.reason
    assert 1 <= plan.n_prefill <= 3


@pytest.fixture(scope="module")
def traces() -> dict[str, WorkloadStats]:
    out = {}
    for name in ("code", "conv"):
        w = load_trace(f"azure-{name}")
        out[name] = WorkloadStats.from_workload(w)
    return out


def test_prefill_heavy_trace_gets_more_prefill(inst: InstanceModel,
                                               traces: dict[str, WorkloadStats]) -> None:
    code = solve(traces["code"], inst, SLO_CHAT, instances=8)
    conv = solve(traces["conv"].with_rate(traces["code"].rate * 2), inst, SLO_CHAT, instances=8)
    assert code.n_prefill > conv.n_prefill
    assert code.n_prefill > code.n_decode
    # Bursty code arrivals need more prefill than a stationary stream at the same mean rate.
    calm = solve(traces["code"].stationary(), inst, SLO_CHAT)
    bursty = solve(traces["code"], inst, SLO_CHAT)
    assert bursty.n_prefill > calm.n_prefill


def test_elastic_provisions_for_the_upper_bound(inst: InstanceModel) -> None:
    base = LoadForecast(rate=10.0, rate_upper=10.0, mean_in=1500.0, m2_in=4.5e6,
                        mean_out=250.0, m2_out=1.25e5)
    burst = LoadForecast(rate=10.0, rate_upper=25.0, mean_in=1500.0, m2_in=4.5e6,
                         mean_out=250.0, m2_out=1.25e5)
    a, b = solve(base, inst, SLO_CHAT), solve(burst, inst, SLO_CHAT)
    assert a.mode == b.mode == "elastic"
    assert b.rate == 25.0 and b.total > a.total
    assert any((r.n_prefill, r.n_decode) == (a.n_prefill, a.n_decode) for r in a.splits)
    grown = solve(burst, inst, SLO_CHAT, current=a.total)
    assert grown.ready_after_s == SolverConfig().cold_start_s
    assert solve(burst, inst, SLO_CHAT, current=50).ready_after_s == 0.0


def test_cost_bound_caps_the_elastic_pool(inst: InstanceModel) -> None:
    plan = solve(_moments(60.0), inst, SLO_CHAT, config=SolverConfig(max_instances=4))
    assert plan.total <= 4
    assert "cost bound" in plan.reason
    assert plan.attainment < SLO_CHAT.attainment


def test_correction_factors_change_predictions(inst: InstanceModel) -> None:
    stats = _moments(12.0)
    raw = predict(stats, inst, SLO_CHAT, 2, 2)
    slow = predict(stats, inst, SLO_CHAT, 2, 2, correction=CorrectionFactors(ttft=2.0, tpot=1.5))
    assert slow.ttft_p90 > raw.ttft_p90 and slow.tpot_p90 > raw.tpot_p90
    assert slow.ttft_attainment <= raw.ttft_attainment
    more = solve(stats, inst, SLO_CHAT, correction=CorrectionFactors(ttft=2.0))
    assert more.n_prefill >= solve(stats, inst, SLO_CHAT).n_prefill


def test_plan_is_json_ready(inst: InstanceModel) -> None:
    plan = solve(_moments(500.0), inst, SLO_CHAT, instances=3)
    d = plan.as_dict()
    assert d["n_prefill"] + d["n_decode"] == 3
    assert len(d["splits"]) == 2
    assert all(v is None or math.isfinite(v) for r in d["splits"] for v in r.values())


def test_bad_input_raises(inst: InstanceModel) -> None:
    with pytest.raises(DopdError):
        solve(_moments(1.0), inst, SLO_CHAT, instances=1)
    with pytest.raises(DopdError):
        SolverConfig(quantile=1.5)
    with pytest.raises(DopdError):
        SolverConfig(max_instances=1)
    with pytest.raises(DopdError):
        predict(_moments(1.0), inst, SLO_CHAT, 0, 2)
    with pytest.raises(DopdError):
        solve("not a load", inst, SLO_CHAT)


def test_correction_factors_ewma_and_clamp() -> None:
    c = CorrectionFactors(alpha=0.5)
    c1 = c.update(observed_ttft=2.0, predicted_ttft=1.0)
    assert c1.ttft == pytest.approx(math.sqrt(2.0)) and c1.tpot == 1.0 and c1.updates == 1
    for _ in range(30):
        c1 = c1.update(observed_ttft=2.0, predicted_ttft=1.0, observed_tpot=0.5,
                       predicted_tpot=1.0)
    assert c1.ttft == pytest.approx(2.0, rel=1e-3) and c1.tpot == pytest.approx(0.5, rel=1e-3)
    assert c.update(observed_ttft=100.0, predicted_ttft=1.0).ttft <= c.hi
    same = c.update(observed_ttft=None, predicted_ttft=1.0, observed_tpot=float("inf"),
                    predicted_tpot=1.0)
    assert (same.ttft, same.tpot) == (1.0, 1.0)
    assert c1.apply_ttft(0.3) == pytest.approx(0.6, rel=1e-3)
    with pytest.raises(DopdError):
        CorrectionFactors(alpha=0.0)
    with pytest.raises(DopdError):
        CorrectionFactors(ttft=5.0)


def test_solver_is_side_effect_free(inst: InstanceModel) -> None:
    stats = _moments(10.0)
    before = (stats.isl.values, stats.osl.values, inst.solo.copy())
    solve(stats, inst, SLO_CHAT, instances=5)
    assert (stats.isl.values, stats.osl.values) == before[:2]
    assert np.array_equal(inst.solo, before[2])
