"""Fair baselines: variants, the contenders of a scenario, hindsight choice with pruning and
the DistServe-style planned split."""

from __future__ import annotations

import pytest

from dopd.errors import DopdError
from dopd.experiments.fair import (
    ROUTER,
    Contender,
    ContenderRunner,
    Variant,
    baseline_contenders,
    split_counts,
)
from dopd.sim.api import SimConfig
from dopd.types import SLO
from dopd.workload import LogNormal, Poisson, Workload, synthetic_workload

SLO_ = SLO(ttft_s=1.0, tpot_s=0.1, attainment=0.9)
CLUSTER = SimConfig(instances=4)


def workload(rate: float = 8.0, seconds: float = 20.0) -> Workload:
    return synthetic_workload(Poisson(rate=rate), LogNormal(1500, 0.8, 120, 0.8),
                              duration_s=seconds, seed=2)


def test_split_counts() -> None:
    assert split_counts(4) == (1, 2, 3)
    many = split_counts(32)
    assert len(many) == 7 and many[0] == 1 and many[-1] == 31
    with pytest.raises(DopdError):
        split_counts(1)


def test_variant_config_and_label() -> None:
    v = Variant("colocated", ROUTER, 512)
    cfg = v.config(CLUSTER)
    assert (cfg.router, cfg.max_batched_tokens) == (ROUTER, 512)
    assert Variant("dopd").config(CLUSTER) is CLUSTER
    assert v.label == "colocated@length-aware@512tok"


def test_contenders_of_a_scenario() -> None:
    cs = {c.name: c for c in baseline_contenders(8)}
    assert list(cs) == ["colocated", "static:best", "colocated+fair", "static+fair",
                        "distserve", "dopd"]
    assert cs["colocated"].plain and cs["static:best"].plain and not cs["dopd"].baseline
    assert len(cs["static:best"].candidates) == 7  # every split
    assert {v.router for v in cs["static+fair"].candidates} == {ROUTER}
    assert {v.budget for v in cs["colocated+fair"].candidates} >= {256, 4096}
    assert [c.name for c in baseline_contenders(1, "dopd:hybrid")] == [
        "colocated", "colocated+fair", "dopd:hybrid"]
    with pytest.raises(DopdError):
        Contender("x", "fixed", (Variant("a"), Variant("b")))


def test_hindsight_keeps_the_best_candidate_and_prunes_collapsed_ones() -> None:
    c = Contender("colocated+fair", "hindsight",
                  (Variant("colocated", ROUTER, 256), Variant("colocated", ROUTER, 4096)))
    runner = ContenderRunner(c, CLUSTER, SLO_, 0)
    w = workload()
    probe = runner.probe(w, 1.0, w.rate_rps)
    assert probe.candidates_run == 2 and probe.resolved in {v.label for v in c.candidates}
    assert set(runner.history) == {v.label for v in c.candidates}
    # a candidate that missed the target twice below is not run again
    runner.history["colocated@length-aware@256tok"] = {0.5: 0.5, 0.7: 0.4}
    runner.history["colocated@length-aware@4096tok"] = {0.5: 0.99, 0.7: 0.99}
    again = runner.probe(w, 0.8, w.rate_rps)
    assert again.candidates_run == 1 and again.resolved == "colocated@length-aware@4096tok"


def test_planned_split_from_the_first_window() -> None:
    c = baseline_contenders(4)[4]
    assert c.name == "distserve" and c.kind == "planned"
    w = workload()
    probe = ContenderRunner(c, CLUSTER, SLO_, 0).probe(w, 1.0, w.rate_rps)
    assert probe.resolved.startswith("distserve(") and probe.candidates_run == 4
    assert 0 <= probe.attainment <= 1 and probe.gpu_seconds > 0
