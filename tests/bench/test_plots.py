"""Plots are written as real image files from hand-made results."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from dopd.bench.plots import (
    attainment_figure,
    ecdf,
    latency_cdfs_figure,
    latency_curves,
    plot_attainment_vs_rate,
    plot_latency_cdfs,
    plot_timelines,
    timelines_figure,
)
from dopd.metrics.summary import summarize_result
from dopd.sim.api import SimResult, Timeline
from dopd.types import SLO, RequestState

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figure_checks import (
    assert_dopd_on_top,
    assert_lines_distinct,
    assert_readable,
    overlapping_texts,
    tick_labels,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def result(policy: str, seed: int, n: int = 50) -> SimResult:
    rng = np.random.default_rng(seed)
    arrival = np.sort(rng.uniform(0, 10, n))
    first = arrival + rng.exponential(0.3, n)
    out = rng.integers(1, 50, n)
    finish = first + out * 0.03
    first[0] = finish[0] = np.nan  # one rejected request
    t = np.arange(0.0, 11.0)
    return SimResult(
        policy=policy,
        request_id=np.arange(n),
        arrival_s=arrival,
        prompt_tokens=rng.integers(10, 500, n),
        output_tokens=out,
        state=np.array([RequestState.REJECTED] + [RequestState.FINISHED] * (n - 1), dtype=int),
        first_token_s=first,
        finish_s=finish,
        prefill_instance=np.zeros(n, dtype=int),
        decode_instance=np.ones(n, dtype=int),
        timeline=Timeline(
            time_s=t,
            prefill_instances=np.where(t < 5, 1, 2),
            decode_instances=np.where(t < 5, 3, 2),
            mixed_instances=np.zeros(t.size, dtype=int),
            arrivals_rps=rng.uniform(3, 7, t.size),
            queued_prefill_tokens=rng.integers(0, 1000, t.size),
            running_decodes=rng.integers(0, 20, t.size),
        ),
        gpu_seconds=40.0,
        switches=1,
        kv_bytes_moved=0.0,
        sim_end_s=11.0,
        events=100,
        wall_s=0.01,
    )


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


def test_ecdf() -> None:
    x, y = ecdf(np.array([3.0, np.nan, 1.0, 2.0]))
    assert x.tolist() == [1.0, 2.0, 3.0]
    assert y.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    _, y = ecdf(np.array([3.0, np.nan, 1.0, 2.0]), total=4)
    assert y[-1] == pytest.approx(0.75)
    with pytest.raises(ValueError):
        ecdf(np.array([1.0, 2.0]), total=1)


def test_timelines_and_cdfs_are_written(tmp_path: Path) -> None:
    results = {"colocated": result("colocated", 1), "static:1:3": result("static:1:3", 2)}
    assert_png(plot_timelines(results, tmp_path / "timeline.png"))
    assert_png(plot_latency_cdfs(results, tmp_path / "cdf.png", SLO(0.5, 0.05)))
    svg = plot_latency_cdfs(results, tmp_path / "cdf.svg")
    assert svg.read_text().lstrip().startswith("<?xml")


def test_attainment_vs_rate(tmp_path: Path) -> None:
    probes = {"dopd": [(4.0, 0.99), (2.0, 1.0), (8.0, 0.5)], "colocated": [(1.0, 0.95)]}
    assert_png(plot_attainment_vs_rate(probes, tmp_path / "att.png", target=0.9))


def test_empty_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        plot_timelines({}, tmp_path / "x.png")
    with pytest.raises(ValueError):
        plot_latency_cdfs({}, tmp_path / "x.png")


def test_latency_curves_top_out_at_the_served_share(tmp_path: Path) -> None:
    res = result("dopd", 3, n=40)
    state = res.state.copy()
    first, finish = res.first_token_s.copy(), res.finish_s.copy()
    state[1:4] = RequestState.REJECTED  # 4 of 40 never got a first token
    first[1:4] = finish[1:4] = np.nan
    multi = np.flatnonzero(res.output_tokens > 1)[-2:]
    state[multi] = RequestState.ABORTED  # 2 got their first token, never finished
    finish[multi] = np.nan
    res = dataclasses.replace(res, state=state, first_token_s=first, finish_s=finish)
    curves = latency_curves(res)
    x, y, share = curves["ttft"]
    assert share == pytest.approx(4 / 40) and y[-1] == pytest.approx(0.9) and x.size == 36
    summary = summarize_result(res, SLO(0.5, 0.05))
    assert summary.ttft_p90 == math.inf  # the curve never passes 0.9 ...
    i = int(np.searchsorted(y, 0.5))  # ... and the P50 sits where it passes 0.5
    assert y[i] == pytest.approx(0.5) and x[i] <= summary.ttft_p50 <= x[i + 1]
    x, y, share = curves["tpot"]
    started_multi = int(np.count_nonzero((res.output_tokens > 1) & np.isfinite(first)))
    assert share == pytest.approx(2 / started_multi) and y[-1] == pytest.approx(1 - share)
    assert curves["e2e"][2] == pytest.approx(6 / 40)
    assert_png(plot_latency_cdfs({"dopd": res, "colocated": result("colocated", 4)},
                                 tmp_path / "cdf.png", SLO(0.5, 0.05)))


# ------------------------------------------------------------------------------------------
# Readable at a glance (see figure_checks.py)

POLICIES = ["colocated", "static:best", "reactive", "dopd", "dopd:noforecast"]


def same_curves() -> dict[str, SimResult]:
    """dopd and two others with identical requests (coinciding curves), two that differ."""
    base = result("x", 1, n=200)
    out = {p: dataclasses.replace(base, policy=p) for p in ("colocated", "dopd", "static:best")}
    out["reactive"] = result("reactive", 2, n=200)
    out["dopd:noforecast"] = result("dopd:noforecast", 3, n=200)
    return {p: out[p] for p in POLICIES}


def test_latency_cdfs_read_at_a_glance() -> None:
    fig = latency_cdfs_figure(same_curves(), SLO(0.5, 0.05))
    try:
        assert_readable(fig)
        for ax in fig.axes:
            assert_dopd_on_top(ax, POLICIES)
            assert_lines_distinct(ax, POLICIES)
            # the unfinished share follows a comma ("dopd, 0.5% never got there")
            labels = [t.get_text().split(", ")[0] for t in ax.get_legend().get_texts()]
            # coinciding curves are named, so a hidden line is not a missing one
            assert "colocated (same as dopd)" in labels and "static:best (same as dopd)" in labels
            assert "reactive" in labels and "dopd" in labels
        assert fig.axes[0].get_xlabel().startswith("TTFT (s)")
        assert fig.axes[1].get_xlabel().startswith("TPOT (ms)")
    finally:
        plt.close(fig)


def test_narrow_latency_range_has_no_overlapping_tick_labels() -> None:
    # TTFT within 20-30 ms: the default log axis labelled every minor tick as 2x10^-2 ...
    res = result("bench", 4, n=100)
    first = res.arrival_s + np.linspace(0.02, 0.03, res.arrival_s.size)
    narrow = dataclasses.replace(res, first_token_s=first,
                                 finish_s=first + res.output_tokens * 0.005)
    fig = latency_cdfs_figure({"bench": narrow}, SLO(0.5, 0.1))
    try:
        assert_readable(fig)
        assert overlapping_texts(fig) == []
        shown = [t.get_text() for t in tick_labels(fig.axes[0], "x")]
        assert shown and all("10^" not in s and "times" not in s for s in shown), shown
    finally:
        plt.close(fig)


def test_attainment_figure_reads_at_a_glance() -> None:
    same = [(10.0, 1.0), (20.0, 0.93), (30.0, 0.5)]
    probes = {"colocated": same, "static:best": [(10.0, 1.0), (20.0, 0.8)], "dopd": same,
              "sla-planner": [(10.0, 0.99), (25.0, 0.2)]}
    fig = attainment_figure(probes, target=0.9, title="conv-8b: SLO attainment against load")
    try:
        assert_readable(fig)
        ax = fig.axes[0]
        assert_dopd_on_top(ax, list(probes))
        assert_lines_distinct(ax, list(probes))
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels[:4] == ["colocated (same as dopd)", "static:best", "dopd", "sla-planner"]
        assert ax.get_xlabel() == "arrival rate (req/s)" and "%" in ax.get_ylabel()
    finally:
        plt.close(fig)


def test_timelines_stack_roles_so_equal_counts_stay_visible() -> None:
    results = {"static:1:3": result("static:1:3", 2), "dopd": result("dopd", 1)}
    fig = timelines_figure(results)
    try:
        assert_readable(fig)
        left = fig.axes[0]
        # prefill and decode are 2 and 2 from t=5: stacked areas, both drawn
        assert [t.get_text() for t in left.get_legend().get_texts()] == ["prefill", "decode"]
        tops = [c.get_paths()[0].vertices[:, 1].max() for c in left.collections]
        assert tops == [2.0, 4.0]
    finally:
        plt.close(fig)
