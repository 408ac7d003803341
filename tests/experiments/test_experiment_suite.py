"""Suites as data: the built-in suites, selection and validation, and the workload sources."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dopd.data import TRACES_DIR
from dopd.errors import DopdError
from dopd.experiments.sources import (
    clip_context,
    clipped_share,
    offered_rate,
    scaled_arrival,
    scenario_workload,
    split_by_ratio,
)
from dopd.experiments.suite import Scenario, Suite, SyntheticSource, Targets, TraceSource
from dopd.experiments.suites import SUITES, get_suite
from dopd.sim.api import SimConfig
from dopd.types import SLO
from dopd.workload import LengthTable, OnOff, Workload

TRACES = TRACES_DIR


def synthetic_scenario(**changes: object) -> Scenario:
    base = Scenario(
        name="syn", title="synthetic",
        source=SyntheticSource(
            arrival="poisson:rate=10",
            lengths="lognormal:prompt_mean=500,prompt_cv=0.5,output_mean=100,output_cv=0.5",
            shift="fixed:prompt=4000,output=10"),
        cluster=SimConfig(instances=2), slo=SLO(1.0, 0.1), slo_source="test",
        duration_s=60.0, scale=1.0)
    return dataclasses.replace(base, **changes)


def test_builtin_suites_are_valid_and_named() -> None:
    assert set(SUITES.names()) == {"paper", "quick", "smoke"}
    for name in SUITES.names():
        suite = get_suite(name)
        assert suite.name == name
        assert suite.baselines == ("colocated", "static:best")
        assert suite.timeline_scenario in [s.name for s in suite.scenarios]


def test_paper_suite_covers_the_issue() -> None:
    suite = get_suite("paper")
    assert set(suite.policies) >= {"colocated", "static:best", "reactive", "sla-planner", "dopd",
                                   "dopd:noforecast", "dopd:nolength", "dopd:novariance",
                                   "dopd:nohybrid"}
    sources = {s.source.path if isinstance(s.source, TraceSource) else "sharegpt"
               for s in suite.scenarios}
    assert {"azure-conv", "azure-code", "mooncake", "sharegpt"} <= sources
    clusters = {(s.cluster.gpu, s.cluster.tp, s.cluster.model) for s in suite.scenarios}
    assert ("a100-80gb", 1, "llama-3-8b") in clusters
    assert ("h100-sxm", 4, "llama-2-70b") in clusters
    shifted = [s for s in suite.scenarios if isinstance(s.source, SyntheticSource)]
    assert shifted and all(s.source.shift != "none" and "onoff" in s.source.arrival
                           for s in shifted)
    assert suite.targets == Targets(1.5, 0.67, 0.22, 0.99)


def test_select_restricts_and_keeps_baselines() -> None:
    suite = get_suite("paper")
    small = suite.select(("code-8b",), ("dopd",))
    assert [s.name for s in small.scenarios] == ["code-8b"]
    assert small.policies == ("colocated", "static:best", "dopd")
    assert small.timeline_scenario is None
    with pytest.raises(DopdError, match="no scenario 'nope'"):
        suite.select(("nope",))
    variant = suite.select(("code-8b",), ("dopd", "dopd:drain=migrate"))
    assert variant.policies == ("colocated", "static:best", "dopd", "dopd:drain=migrate")
    with pytest.raises(DopdError, match="selected twice"):
        suite.select(None, ("dopd", "dopd"))
    with pytest.raises(DopdError, match="cannot drop a baseline"):
        suite.without({"colocated"})


def test_suite_and_scenario_validation() -> None:
    s = synthetic_scenario()
    with pytest.raises(DopdError, match="scenario names repeat"):
        Suite("x", "", (s, s))
    with pytest.raises(DopdError, match="two roles"):
        Suite("x", "", (s,), competitors=("colocated",))
    with pytest.raises(DopdError, match="unknown timeline scenario"):
        Suite("x", "", (s,), timeline_scenario="other")
    with pytest.raises(DopdError, match="duration must be > 0"):
        synthetic_scenario(duration_s=0.0)
    with pytest.raises(DopdError, match="scale must be > 0"):
        synthetic_scenario(scale=-1.0)
    with pytest.raises(DopdError, match="shift_at"):
        SyntheticSource("poisson:rate=1", "fixed:prompt=1,output=1", shift_at=(0.5, 0.4, 0.6,
                                                                               0.7))


def test_scaled_arrival_multiplies_every_rate() -> None:
    process = scaled_arrival("onoff:rate_on=4,rate_off=1,mean_on_s=10,mean_off_s=20", 3.0)
    assert isinstance(process, OnOff)
    assert (process.rate_on, process.rate_off, process.mean_on_s) == (12.0, 3.0, 10.0)
    with pytest.raises(DopdError, match="sets no rate"):
        scaled_arrival("onoff:mean_on_s=1,mean_off_s=1", 2.0)
    with pytest.raises(DopdError, match="not a number"):
        scaled_arrival("poisson:rate=fast", 2.0)


def test_synthetic_load_scales_rate_over_the_same_window() -> None:
    s = synthetic_scenario()
    one = scenario_workload(s, 1.0, TRACES, seed=3)
    two = scenario_workload(s, 2.0, TRACES, seed=3)
    assert one.arrival_s[-1] < 60.0 and two.arrival_s[-1] < 60.0
    assert 1.7 < len(two) / len(one) < 2.3
    again = scenario_workload(s, 2.0, TRACES, seed=3)
    assert np.array_equal(two.arrival_s, again.arrival_s)
    assert np.array_equal(two.prompt_tokens, again.prompt_tokens)
    # the mix shifts to 4000-token prompts in 30-40% of the window and back in 65-75%
    t, p = two.arrival_s, two.prompt_tokens
    assert np.all(p[(t > 0.4 * 60) & (t < 0.65 * 60)] == 4000)
    assert not np.any(p[t < 0.3 * 60] == 4000) and not np.any(p[t > 0.75 * 60] == 4000)


def test_clip_context_truncates_prompts_and_keeps_outputs() -> None:
    w = Workload.from_arrays("w", [0.0, 1.0, 2.0], [100, 5000, 9000], [50, 200, 9000])
    clipped = clip_context(w, 4096)
    assert clipped.prompt_tokens.tolist() == [100, 3896, 1]
    assert clipped.output_tokens.tolist() == [50, 200, 4095]
    assert np.all(clipped.prompt_tokens + clipped.output_tokens <= 4096)


def test_split_by_ratio_separates_decode_and_prefill_heavy() -> None:
    table = LengthTable("t", [100, 200, 4000, 3000], [400, 500, 10, 20])
    low, high = split_by_ratio(table)
    assert sorted(low.prompt_tokens.tolist()) == [100, 200]
    assert sorted(high.prompt_tokens.tolist()) == [3000, 4000]
    with pytest.raises(DopdError, match="cannot be split"):
        split_by_ratio(LengthTable("same", [10, 10], [10, 10]))


def test_trace_source_is_compressed_then_cut() -> None:
    s = synthetic_scenario(source=TraceSource("azure_llm_2023/AzureLLMInferenceTrace_conv.csv"),
                           duration_s=60.0, scale=2.0, max_context=2048)
    w1 = scenario_workload(s, 1.0, TRACES, 0)
    w2 = scenario_workload(s, 2.0, TRACES, 0)
    assert w1.arrival_s[-1] < 60.0 and w2.arrival_s[-1] < 60.0
    assert len(w2) > 1.5 * len(w1)
    # the 4x-compressed window starts with the 2x window's requests, twice as fast
    n = len(w1)
    assert np.allclose(w2.arrival_s[:n], w1.arrival_s / 2.0)
    assert int((w1.prompt_tokens + w1.output_tokens).max()) <= 2048
    assert 0.0 < clipped_share(s, 1.0, TRACES, 0) < 0.2
    with pytest.raises(DopdError, match="trace file not found"):
        scenario_workload(dataclasses.replace(s, source=TraceSource("missing.csv")), 1.0,
                          TRACES, 0)


def test_rates_grow_with_the_load_where_a_window_ends_in_a_gap() -> None:
    code = get_suite("paper").scenario("code-70b")
    # Between these loads the window's end falls in a gap of the Azure code trace: the
    # requests' own arrival span jumps, so their measured rate drops as the load rises.
    low, high = (scenario_workload(code, load, TRACES, 0) for load in (1.09, 1.14))
    assert high.rate_rps < low.rate_rps
    rates = [offered_rate(code, load, TRACES, 0) for load in (0.5, 1.0, 1.09, 1.14, 2.0)]
    assert rates[1] == pytest.approx(scenario_workload(code, 1.0, TRACES, 0).rate_rps)
    assert rates == pytest.approx([load * rates[1] for load in (0.5, 1.0, 1.09, 1.14, 2.0)])
