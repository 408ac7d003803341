"""``dopd:hybrid``: option parsing, the colocated TPOT predictor, and the mode switch in the
simulator (all-MIXED under light load, a P/D split under heavy decode load, no request lost
either way, MIXED -> DECODE switches in place)."""

from __future__ import annotations

import numpy as np
import pytest
from policy_workloads import constant, run_checked, switches

from dopd.control.policies.hybrid import HybridConfig, HybridMode
from dopd.control.policies.options import DopdOptions
from dopd.control.policies.signals import Observed
from dopd.control.ratio import InstanceModel, WorkloadStats
from dopd.control.ratio.colocated import predict_colocated
from dopd.errors import DopdError
from dopd.sim.api import SimConfig
from dopd.types import SLO, Role

SLO_ = SLO(ttft_s=0.5, tpot_s=0.05)



def test_parse_hybrid_options() -> None:
    plain = DopdOptions.parse("nohybrid")
    assert plain.hybrid is None and plain.manager.mode_changes == 0
    assert DopdOptions.parse("").hybrid == HybridConfig(exit_confirm=3, veto=True)
    opts = DopdOptions.parse("hybrid:enter=0.5:exit=0.9:hold=3:modechanges=6")
    assert opts.hybrid is not None
    assert (opts.hybrid.enter, opts.hybrid.exit, opts.hybrid.hold) == (0.5, 0.9, 3)
    assert opts.manager.mode_changes == 6 and opts.manager.migrate_mixed
    assert opts.spec == "dopd:hybrid:enter=0.5:exit=0.9:hold=3:modechanges=6"
    assert DopdOptions.parse("nohybrid").hybrid is None
    assert DopdOptions.parse("hybrid:gain=0.2:veto=off").hybrid == HybridConfig(
        gain=0.2, exit_confirm=3)


@pytest.mark.parametrize("spec", ["hybrid:nohybrid", "nohybrid:enter=0.5",
                                  "hybrid:enter=0.9:exit=0.5", "hybrid:mixed",
                                  "hybrid:elastic", "hybrid:hold=0",
                                  "hybrid:exit=x", "nohybrid:gain=0.1", "hybrid:gain=-1",
                                  "elastic:enter=0.5"])
def test_bad_hybrid_options_are_clear_errors(spec: str) -> None:
    with pytest.raises(DopdError):
        DopdOptions.parse(spec)


def test_colocated_prediction_rises_with_rate_and_overloads() -> None:
    inst = InstanceModel.from_cluster_config(SimConfig(instances=4))
    stats = WorkloadStats.from_moments(1.0, 1000.0, 1.0, 200.0, 1.0)
    preds = [predict_colocated(inst, stats, 4, 0.1, rate=r) for r in (1.0, 10.0, 30.0)]
    assert all(p.stable for p in preds)
    means = [p.tpot_mean for p in preds]
    assert means == sorted(means) and preds[0].tpot_q >= preds[0].tpot_mean
    # a single decode step at batch ~1 is the floor
    floor = float(inst.decode_step(np.array([1.0]), 1100.0)[0])
    assert preds[0].tpot_mean == pytest.approx(floor, rel=0.3)
    assert preds[0].attainment > 0.99 and preds[0].prefill_share < 0.05
    over = predict_colocated(inst, stats, 4, 0.1, rate=1e4)
    assert not over.stable and over.attainment == 0.0 and over.tpot_q == float("inf")
    with pytest.raises(DopdError):
        predict_colocated(inst, stats, 0, 0.1)


@pytest.mark.parametrize(("rate", "split", "gain", "mixed"), [
    (20.0, 1.0, 0.0, True),    # colocation holds the SLO: stay, whatever the split
    (40.0, 0.95, 0.0, False),  # colocated TPOT p90 over exit x SLO, the split predicted better
    (40.0, 0.5, 0.0, True),    # ... but a split predicted worse than colocation is no way out
    (40.0, 0.5, 0.4, False),   # unless within ``gain`` of it
    (50.0, 0.0, 0.0, False),   # every mode overloaded by decode: leave (the split degrades
                               # better)
    (55.0, 0.0, 0.0, True),    # ... but prompts alone need N - 1 instances: no split helps
    (40.0, None, 0.0, False),  # no split prediction: the TPOT threshold alone decides
])
def test_hybrid_leaves_all_mixed_only_for_a_split_predicted_no_worse(
        rate: float, split: float | None, gain: float, mixed: bool) -> None:
    inst = InstanceModel.from_cluster_config(SimConfig(instances=4))
    stats = WorkloadStats.from_moments(rate, 1000.0, 1.0, 200.0, 1.0)
    mode = HybridMode(HybridConfig(gain=gain), inst, SLO_, 4)
    verdict = mode.decide(10.0, stats, Observed(0, None, None, None), split)
    assert verdict.mixed is mixed and mode.mixed is mixed
    assert ("leave all-mixed" in verdict.reason) is not mixed
    if split is not None:
        assert f"vs {split:.2f} split" in verdict.reason


def test_light_load_runs_all_mixed_and_serves_everything() -> None:
    w = constant(5.0, (200, 1200), (50, 150), duration_s=60.0)
    result = run_checked(w, 4, "dopd:hybrid")
    assert switches(result) == []
    assert int(result.timeline.mixed_instances.min()) == 4
    reasons = [d["reason"] for d in result.decisions if d.get("kind") == "decision"]
    assert reasons and all("hybrid: all-mixed" in r for r in reasons)


def test_the_veto_keeps_all_mixed_when_no_split_is_predicted_better() -> None:
    # The same overload with the veto (the default): no split is predicted strictly better
    # than all-MIXED, so no mode change (a drain under overload) is made.
    w = constant(80.0, (200, 1200), (200, 400), duration_s=60.0)
    result = run_checked(w, 4, "dopd")
    assert switches(result) == []
    assert int(result.timeline.mixed_instances.min()) == 4


def test_heavy_decode_load_moves_to_a_split_without_loss() -> None:
    # Short prompts, long outputs at 80 req/s on 4 instances: colocated decode steps exceed
    # the 50 ms TPOT SLO, so the hybrid leaves all-mixed for the solver's P/D split (every
    # mode is predicted overloaded: without the veto, the split is taken as it degrades
    # better when decode is what overloads colocation).
    w = constant(80.0, (200, 1200), (200, 400), duration_s=60.0)
    result = run_checked(w, 4, "dopd:hybrid:veto=off")
    moves = switches(result)
    assert moves and {role for _, role in moves} <= {Role.PREFILL, Role.DECODE}
    tl = result.timeline
    assert int(tl.mixed_instances[-1]) == 0
    assert int(tl.prefill_instances[-1]) >= 1 and int(tl.decode_instances[-1]) >= 1
    in_place = [d for d in result.decisions if d.get("action") == "SwitchRole"
                and d.get("in_place")]
    assert in_place and all(d["role"] == Role.DECODE.value or d["role"] == Role.DECODE
                            for d in in_place)


def test_damping_doubles_the_cooldown_after_a_flap_and_resets_after_a_long_stay() -> None:
    inst = InstanceModel.from_cluster_config(SimConfig(instances=4))
    damped = HybridMode(HybridConfig(cooldown_s=60.0, damp=True), inst, SLO_, 4)
    damped._entered_at = 100.0
    assert damped.next_cooldown(150.0, observed_exit=False) == 120.0  # a flap
    damped._cooldown, damped._entered_at = 480.0, 0.0
    assert damped.next_cooldown(500.0, observed_exit=False) == 600.0  # capped
    damped._cooldown = 120.0
    assert damped.next_cooldown(1000.0, observed_exit=False) == 60.0  # a long stay
    plain = HybridMode(HybridConfig(cooldown_s=60.0), inst, SLO_, 4)
    plain._entered_at = 100.0
    assert plain.next_cooldown(150.0, observed_exit=False) == 60.0
    assert plain.next_cooldown(150.0, observed_exit=True) == 120.0
    assert DopdOptions.parse("damp=on").hybrid == HybridConfig(exit_confirm=3, veto=True,
                                                               damp=True)
    with pytest.raises(DopdError):
        DopdOptions.parse("damp=maybe")
