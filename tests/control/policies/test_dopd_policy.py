"""The ``dopd`` policy in the simulator: it settles and holds on a constant load, follows a step
change of the length mix without oscillating, loses no request to a switch, settles on the
brute-force best split of small pools, beats every static split under a mix shift, and logs
its decisions with prediction and observation.

The solver alone against brute force is tested in ``tests/control/ratio/test_ratio_vs_sim.py``;
here the whole loop (monitor, forecaster, solver, manager) is. The controller's properties are
tested with ``dopd:nolength`` (the ``pd-pair`` router that the static splits use too), so that
they are the split's and not the length-aware router's.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from policy_workloads import constant, mix_shift, reversals, run_checked, switches

from dopd.control.cluster_models import build_models
from dopd.control.manager import to_jsonl
from dopd.control.policies.base import PolicyContext, make_policy
from dopd.control.policies.dopd_policy import DopdPolicy
from dopd.control.policies.options import DopdOptions
from dopd.errors import DopdError
from dopd.metrics.summary import summarize_result
from dopd.sim.api import SimConfig
from dopd.sim.simulation import run_simulation
from dopd.types import SLO, RequestState, Role

SLO_ = SLO(ttft_s=0.5, tpot_s=0.05)
CTRL = "dopd:nolength:nohybrid"



def test_constant_load_settles_and_then_holds() -> None:
    # Short prompts, long outputs at 60 req/s on 6 instances: the prior split (4:2) is one
    # decode instance short; dopd moves once, early, and holds.
    w = constant(60.0, (200, 1200), (200, 400))
    result = run_checked(w, 6, CTRL)
    moves = switches(result)
    assert 1 <= len(moves) <= 2 and all(t <= 40.0 for t, _ in moves), moves
    assert all(role == Role.DECODE for _, role in moves)
    assert summarize_result(result, SLO_).attainment >= 0.95


def test_a_step_change_of_the_mix_settles_without_oscillation() -> None:
    w = mix_shift()
    result = run_checked(w, 4, CTRL)
    moves = switches(result)
    assert reversals(moves) <= 1, moves
    # The decode-heavy phase starts at 90 s: dopd follows it within 30 s and then holds.
    late = [t for t, role in moves if role == Role.DECODE]
    assert late and 90.0 <= min(late) <= 120.0, moves
    assert all(t <= 120.0 for t, _ in moves), moves
    tl = result.timeline
    assert tl.decode_instances[-1] >= 2 and tl.prefill_instances[-1] >= 1


def test_switches_lose_no_request() -> None:
    # Without the length-aware router's admission control every request must finish, across
    # switches in both directions.
    result = run_checked(mix_shift(), 4, CTRL)
    assert len(switches(result)) >= 2
    assert np.all(result.state == int(RequestState.FINISHED))


def test_dopd_beats_every_static_split_under_a_mix_shift() -> None:
    w = mix_shift()
    config = SimConfig(instances=4)
    static = {p: summarize_result(run_simulation(w, config, f"static:{p}:{4 - p}", SLO_),
                                  SLO_).attainment for p in range(1, 4)}
    for spec in (CTRL, "dopd"):
        dopd = summarize_result(run_simulation(w, config, spec, SLO_), SLO_).attainment
        assert dopd >= max(static.values()) + 0.04, (spec, dopd, static)


CASES = {
    # instances, rate, prompt range, output range: the best static split differs per case.
    "n4-prefill-bound": (4, 22.0, (500, 2500), (100, 300)),
    "n5-long-prompts": (5, 20.0, (1000, 3000), (50, 150)),
    "n6-decode-bound": (6, 60.0, (200, 1200), (200, 400)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_settled_split_matches_brute_force(name: str) -> None:
    n, rate, prompt, output = CASES[name]
    w = constant(rate, prompt, output)
    config = SimConfig(instances=n)
    sim = np.array([summarize_result(run_simulation(w, config, f"static:{p}:{n - p}", SLO_),
                                     SLO_).attainment for p in range(1, n)])
    result = run_simulation(w, config, CTRL, SLO_)
    settled = int(result.timeline.prefill_instances[-1])
    assert result.timeline.decode_instances[-1] == n - settled
    best = int(np.argmax(sim)) + 1
    assert abs(settled - best) <= 1, (settled, sim)
    assert sim[settled - 1] >= sim.max() - 0.02, (settled, sim)
    assert summarize_result(result, SLO_).attainment >= sim.max() - 0.05, sim


def test_decisions_carry_prediction_then_observation_as_json_lines() -> None:
    result = run_simulation(mix_shift(30.0), SimConfig(instances=4), "dopd:nohybrid", SLO_)
    plans = [d for d in result.decisions if d.get("kind") == "decision"
             and d.get("predicted") is not None]
    assert len(plans) >= 10
    assert all({"t", "observation", "forecast", "target", "current", "actions", "reason"}
               <= set(d) for d in plans)
    settled = [d for d in plans if d["observed"] is not None]
    assert len(settled) >= len(plans) - 2
    assert all(d["observed"]["t"] > d["t"] for d in settled)
    assert 0.0 <= plans[3]["predicted"]["attainment"] <= 1.0
    lines = to_jsonl(result.decisions).splitlines()
    assert len(lines) == len(result.decisions)
    assert [json.loads(line)["t"] for line in lines] == sorted(d["t"] for d in result.decisions)


@pytest.mark.parametrize("spec", ["dopd:noforecast", "dopd:novariance", "dopd:nolength",
                                  "dopd:mixed", "dopd:elastic", "dopd:forecast=holt:rate=upper",
                                  "dopd:drain=migrate"])
def test_options_and_ablations_serve_every_request(spec: str) -> None:
    result = run_checked(mix_shift(30.0), 4, spec)
    assert result.policy == spec


def _context(instances: int = 4, slo: SLO | None = SLO_) -> PolicyContext:
    config = SimConfig(instances=instances)
    models = build_models(config)
    return PolicyContext(config, models.latency, slo, 0, models.kv_blocks)


def test_option_parsing_and_errors() -> None:
    o = DopdOptions.parse("noforecast:novariance:nolength:interval=10:init=1/3")
    assert o.forecast is None and not o.variance and not o.length_aware
    assert o.interval_s == 10.0 and o.initial_split() == (1, 3)
    assert DopdOptions.parse("").forecast == "ewma" and DopdOptions.parse("").rate == "upper"
    assert DopdOptions.parse("drain=migrate").manager.migrate
    assert not DopdOptions.parse("").manager.migrate
    policy = make_policy("dopd:nolength:init=1/3", _context())
    assert isinstance(policy, DopdPolicy) and policy.router == "pd-pair"
    assert policy.initial_roles(4) == [Role.PREFILL, Role.DECODE, Role.DECODE, Role.DECODE]
    for bad in ("dopd:bogus", "dopd:interval=0", "dopd:forecast=nonsense", "dopd:rate=peak",
                "dopd:init=4", "dopd:noforecast:forecast=ewma", "dopd:confirm=0",
                "dopd:drain=teleport"):
        with pytest.raises(DopdError):
            make_policy(bad, _context())
    with pytest.raises(DopdError, match="needs an SLO"):
        make_policy("dopd", _context(slo=None))
    with pytest.raises(DopdError):
        make_policy("dopd:init=1/1", _context()).initial_roles(4)  # type: ignore[union-attr]
