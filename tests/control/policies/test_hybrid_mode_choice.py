"""The hybrid's mode choice on both SLOs (issue 11): a summarization-shaped load (long prompts,
short outputs) stays all-MIXED, where N pooled instances beat any split's N - 1 prefill ones,
even at a load that overloads it; a decode-heavy load under a tight TPOT SLO leaves it, after
``exit_confirm`` plans."""

from __future__ import annotations

import numpy as np

from dopd.control.policies.hybrid import HybridConfig, HybridMode
from dopd.control.policies.signals import Observed
from dopd.control.ratio import InstanceModel, WorkloadStats, solve
from dopd.control.ratio.colocated import colocated_ttft_attainment, predict_colocated
from dopd.sim.api import SimConfig
from dopd.sim.simulation import run_simulation
from dopd.types import SLO, Role
from dopd.workload.spec import parse_arrival, parse_lengths
from dopd.workload.synthetic import synthetic_workload

INST = InstanceModel.from_cluster_config(SimConfig(instances=8))
SUMMARY = SLO(ttft_s=0.5, tpot_s=0.1)
NONE = Observed(0, None, None, None)


def test_colocation_pools_prompts_over_every_instance() -> None:
    stats = WorkloadStats.from_moments(25.0, 3000.0, 1.0, 60.0, 1.0)
    pred = predict_colocated(INST, stats, 8, SUMMARY.tpot_s)
    pooled = colocated_ttft_attainment(INST, stats, SUMMARY, pred)
    split = solve(stats, INST, SUMMARY, 8)
    assert pred.attainment * pooled > split.attainment
    # A heavier decode side per step leaves less of each step to the prompts.
    heavy = WorkloadStats.from_moments(25.0, 3000.0, 1.0, 600.0, 1.0)
    slowed = colocated_ttft_attainment(INST, heavy, SUMMARY,
                                       predict_colocated(INST, heavy, 8, SUMMARY.tpot_s))
    assert slowed < pooled


def test_the_solver_keeps_a_summarization_load_all_mixed_up_to_overload() -> None:
    for rate in (5.0, 15.0, 25.0, 40.0, 80.0):
        stats = WorkloadStats.from_moments(rate, 3000.0, 1.0, 60.0, 1.0)
        split = solve(stats, INST, SUMMARY, 8).attainment
        mode = HybridMode(HybridConfig(exit_confirm=3), INST, SUMMARY, 8)
        for k in range(10):
            verdict = mode.decide(2.0 * k, stats, NONE, split)
        assert verdict.mixed, (rate, verdict.reason)


def test_a_decode_heavy_load_under_a_tight_tpot_leaves_after_confirmation() -> None:
    slo = SLO(ttft_s=1.0, tpot_s=0.015)
    stats = WorkloadStats.from_moments(60.0, 500.0, 1.0, 400.0, 1.0)
    split = solve(stats, INST, slo, 8).attainment
    mode = HybridMode(HybridConfig(exit_confirm=3), INST, slo, 8)
    seen = [mode.decide(2.0 * k, stats, NONE, split).mixed for k in range(4)]
    assert seen == [True, True, False, False]


def test_dopd_hybrid_runs_a_bursty_summarization_load_all_mixed() -> None:
    workload = synthetic_workload(
        parse_arrival("gamma:rate=15,cv=3"),
        parse_lengths("lognormal:prompt_mean=3000,prompt_cv=1,output_mean=60,output_cv=1"),
        num_requests=600, seed=0)
    config = SimConfig(instances=8, router="length-aware")
    hybrid = run_simulation(workload, config, "dopd:hybrid:mixtok=off", SUMMARY, seed=0)
    colocated = run_simulation(workload, config, "colocated", SUMMARY, seed=0)
    assert hybrid.switches == 0
    assert set(np.unique(hybrid.prefill_instance[hybrid.prefill_instance >= 0])) <= set(range(8))
    assert np.array_equal(hybrid.first_token_s, colocated.first_token_s, equal_nan=True)
    assert Role.MIXED  # all-MIXED from the start: the same schedule as colocated
