"""The scenario space of ``dopd experiment generalize``: deterministic draws, coverage of every
family / regime / model, and feasibility (every scenario builds and runs; its SLO is met on an
idle instance; prompts beyond the context window are truncated)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from dopd.data import TRACES_DIR
from dopd.errors import DopdError
from dopd.experiments import gen_space
from dopd.experiments.gen_space import (
    NAMED,
    decode_step_s,
    draw_scenario,
    draw_scenarios,
    named_scenario,
    prefill_s,
)
from dopd.experiments.sources import clipped_share, raw_workload, scenario_workload
from dopd.metrics.summary import summarize_result
from dopd.perf.model_catalog import get_model
from dopd.sim.simulation import run_simulation

DRAWS = draw_scenarios(200, 11)


def test_same_seed_same_scenarios_and_index_independent_of_n() -> None:
    assert draw_scenarios(6, 3) == draw_scenarios(6, 3)
    assert draw_scenarios(6, 3)[4] == draw_scenario(3, 4)
    assert draw_scenarios(6, 3) != draw_scenarios(6, 4)
    a = scenario_workload(draw_scenario(3, 1).scenario, 1.0, TRACES_DIR, 3)
    b = scenario_workload(draw_scenario(3, 1).scenario, 1.0, TRACES_DIR, 3)
    assert np.array_equal(a.arrival_s, b.arrival_s)
    assert np.array_equal(a.prompt_tokens, b.prompt_tokens)


def test_200_draws_cover_the_space() -> None:
    def seen(key: str) -> Counter[object]:
        return Counter(g.tags()[key] for g in DRAWS)

    assert set(seen("family")) == set(gen_space.FAMILIES)
    assert set(seen("regime")) == set(gen_space.REGIMES)
    assert set(seen("size")) == set(gen_space.SIZES)
    assert set(seen("shift")) == {"none", "rate", "mix", "trace"}
    assert set(seen("arrival")) == {*gen_space.ARRIVALS, "step", "trace"}
    assert {"a100-80gb", "h100-sxm", "l40s"} <= set(seen("gpu"))
    assert set(seen("instances")) == set(gen_space.BUDGETS)
    assert {1, 2, 4} == set(seen("tp"))
    traces = {g.scenario.source.path for g in DRAWS if g.family == "trace"}  # type: ignore[union-attr]
    assert traces == set(gen_space.TRACES)
    assert len({g.scenario.slo for g in DRAWS}) > 150  # SLOs come from each scenario


@pytest.mark.parametrize("index", range(0, 200, 9))
def test_drawn_scenarios_are_feasible(index: int) -> None:
    g = DRAWS[index]
    s = g.scenario
    context = get_model(s.cluster.model).max_context
    assert s.max_context == context
    for load in (0.125, 4.0):
        w = scenario_workload(s, load, TRACES_DIR, 11)
        assert len(w) >= 1 and int((w.prompt_tokens + w.output_tokens).max()) <= context
    w = scenario_workload(s, 1.0, TRACES_DIR, 11)
    assert len(w) >= 0.2 * 400 or s.duration_s == 900  # about `requests` requests at load 1
    # idle: >= 95 % of prompts prefill alone within the TTFT target, one decode step in TPOT
    p95 = float(np.percentile(w.prompt_tokens, 95))  # another sample than the SLO's: 5 % slack
    assert prefill_s(s.cluster, p95) <= 1.05 * s.slo.ttft_s
    ctx = float(w.prompt_tokens.mean() + w.output_tokens.mean())
    assert decode_step_s(s.cluster, 1, ctx) <= s.slo.tpot_s


@pytest.mark.parametrize("index", [0, 3, 7, 12, 21, 33])
def test_drawn_scenarios_run_and_meet_their_slo_at_light_load(index: int) -> None:
    g = DRAWS[index]
    s = g.scenario
    w = scenario_workload(s, 0.05, TRACES_DIR, 11)
    result = run_simulation(w, s.cluster, "colocated", s.slo, 11)
    assert summarize_result(result, s.slo).attainment >= s.slo.attainment


def test_prompts_beyond_the_context_window_are_truncated() -> None:
    beyond = [g for g in DRAWS if g.family == "beyond-context"]
    assert beyond
    shares = [clipped_share(g.scenario, 1.0, TRACES_DIR, 11) for g in beyond[:5]]
    assert max(shares) > 0
    g = beyond[int(np.argmax(shares))]
    raw = raw_workload(g.scenario, 1.0, TRACES_DIR, 11)
    assert int(raw.prompt_tokens.max()) > g.scenario.max_context  # type: ignore[operator]


def test_named_scenarios_build() -> None:
    for name in NAMED:
        g = named_scenario(name)
        assert g.name == name and g.nominal_rps > 0
        assert len(scenario_workload(g.scenario, 0.25, TRACES_DIR, 0)) >= 1
    long = named_scenario("long-context").scenario
    assert (long.slo.ttft_s, long.slo.tpot_s) == (5.0, 0.1)
    with pytest.raises(DopdError, match="unknown scenario"):
        named_scenario("nosuch")


def test_bad_draw_arguments() -> None:
    with pytest.raises(DopdError):
        draw_scenarios(0, 1)
    with pytest.raises(DopdError):
        draw_scenario(-1, 0)
