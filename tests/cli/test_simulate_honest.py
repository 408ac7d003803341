"""Honest percentiles in ``dopd simulate`` runs where admission control rejects requests: the
rejections move the P90, a miss is null in the JSON, the served-only figure stays reachable by
name, and no attainment or goodput figure changes (compared with served-only percentiles on the
same runs)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dopd.metrics.summary as metrics
from dopd.cli.common import build_workload
from dopd.cli.main import main
from dopd.cli.simulate_cmd import records_of, simulate
from dopd.config import apply_overrides
from dopd.experiments.suites import get_suite
from dopd.experiments.tasks import SearchTask, run_search
from dopd.metrics.percentiles import served_percentiles
from dopd.sim.run_config import RunConfig
from dopd.types import RequestState


def run_json(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "r.json"
    assert main(["simulate", *args, "--json", str(out), "-q"]) == 0
    return json.loads(out.read_text())


def test_rejections_make_the_p90_a_miss(tmp_path: Path) -> None:
    # The example: the synthetic workload at --rate-scale 3, dopd (the P/D split, the
    # default then, now dopd:nohybrid) rejects ~19 %.
    data = run_json(tmp_path, "--arrival", "poisson", "--rate-scale", "3",
                    "--policy", "colocated,dopd:nohybrid")
    dopd, colocated = data["dopd:nohybrid"], data["colocated"]
    assert dopd["rejected"] >= 60 and dopd["rejected_share"] == dopd["rejected"] / 500
    assert dopd["ttft_p90"] is None and dopd["e2e_p90"] is None  # misses, written null
    assert dopd["ttft_p90_served"] < 0.5  # the flattering figure is still there by name
    assert dopd["ttft_unreached_share"] >= dopd["rejected_share"]
    assert dopd["ttft_p50"] is not None and dopd["ttft_p50"] <= dopd["ttft_p90_served"]
    # nothing rejected: honest and served-only figures are the same numbers
    assert colocated["rejected"] == 0
    for key in ("ttft_p50", "ttft_p90", "ttft_p99", "tpot_p90", "e2e_p90"):
        assert colocated[key] == colocated[f"{key}_served"]


def test_a_few_rejections_move_a_finite_p90() -> None:
    cfg = apply_overrides(RunConfig(), {"policies": ["dopd"], "workload.rate_scale": 2.0})
    workload = build_workload(cfg.workload, cfg.seed, cfg.cluster.model)
    run = simulate(cfg, workload)["dopd"]
    s, r = run.summary, run.result
    state = np.asarray(r.state)
    rejected = int(np.count_nonzero(state == int(RequestState.REJECTED)))
    assert 0 < rejected < 0.1 * len(r)  # few enough that the P90 stays finite
    ttft = np.asarray(r.first_token_s) - np.asarray(r.arrival_s)
    served = ttft[np.isfinite(ttft)]
    assert s.ttft_p90_served == pytest.approx(float(np.percentile(served, 90)))
    # every request counted, the unserved ones above any served latency
    everyone = np.where(np.isfinite(ttft), ttft, 1e9)
    assert s.ttft_p90 == pytest.approx(float(np.percentile(everyone, 90)))
    assert s.ttft_p90 > s.ttft_p90_served * 1.05  # the rejections moved it
    assert s.ttft_p99 == math.inf  # ... and the P99 lands on a rejected request


def _served_only(values: np.ndarray, qs: Any) -> list[float | None]:
    """The percentiles as dopd computed them before: over the finite values only."""
    return served_percentiles(values, qs)


def test_honest_percentiles_change_no_attainment_or_goodput_figure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = apply_overrides(RunConfig(), {"policies": ["colocated", "dopd:nohybrid"],
                                        "workload.rate_scale": 3.0, "goodput.enabled": True})
    workload = build_workload(cfg.workload, cfg.seed, cfg.cluster.model)
    honest = records_of(simulate(cfg, workload), workload, cfg)
    monkeypatch.setattr(metrics, "honest_percentiles", _served_only)
    before = records_of(simulate(cfg, workload), workload, cfg)
    figures = ("requests", "finished", "rejected", "aborted", "met", "attainment", "goodput_rps",
               "goodput_rps_per_gpu", "max_goodput_rps", "max_goodput_rps_per_gpu",
               "max_goodput_rate_scale", "max_goodput_runs", "max_goodput_feasible")
    for spec in cfg.policies:
        assert {k: honest[spec][k] for k in figures} == {k: before[spec][k] for k in figures}
    # the patch took effect: the served-only P90 is the flattering finite one
    assert honest["dopd:nohybrid"]["ttft_p90"] == math.inf
    assert before["dopd:nohybrid"]["ttft_p90"] == honest["dopd:nohybrid"]["ttft_p90_served"] < 0.5


def test_experiment_search_attainment_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    suite = get_suite("smoke")
    scenario = next(s for s in suite.scenarios if s.name == "shift-8b")  # synthetic: no trace
    task = SearchTask(scenario, "dopd", dataclasses.replace(suite.search, max_runs=4), "",
                      suite.seed)
    honest = run_search(task)
    monkeypatch.setattr(metrics, "honest_percentiles", _served_only)
    before = run_search(task)
    assert honest.probes == before.probes and honest.load == before.load
