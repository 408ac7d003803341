"""Load statistics: length distributions, constructors and the time variation of arrivals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dopd.control.forecast.multi import LoadForecast
from dopd.control.monitor import ArrivalMonitor
from dopd.control.ratio.arrivals import arrival_series, burstiness, rate_levels
from dopd.control.ratio.stats import LengthDist, WorkloadStats, as_stats
from dopd.errors import DopdError
from dopd.workload import Workload


def test_samples_keep_mean_and_second_moment_exactly() -> None:
    x = np.random.default_rng(0).lognormal(7.0, 1.1, 50_000).round()
    d = LengthDist.from_samples(x)
    assert d.mean == pytest.approx(x.mean(), rel=1e-9)
    assert d.m2 == pytest.approx(np.mean(x * x), rel=1e-9)
    assert len(d.values) <= 64
    assert d.quantile(0.5) == pytest.approx(np.median(x), rel=0.1)
    assert d.quantile(0.9) == pytest.approx(np.quantile(x, 0.9), rel=0.15)


def test_lognormal_has_stated_mean_and_cv() -> None:
    d = LengthDist.lognormal(1000.0, 1.5)
    assert d.mean == pytest.approx(1000.0, rel=1e-9)
    assert d.cv == pytest.approx(1.5, rel=1e-6)
    assert LengthDist.lognormal(500.0, 0.0) == LengthDist.point(500.0)
    m = LengthDist.from_moments(200.0, 200.0**2 * 2)
    assert m.cv == pytest.approx(1.0, rel=1e-6)


def test_histogram_bins_match_given_moments() -> None:
    edges = [256, 512, 1024, 2048, 4096, math.inf]
    d = LengthDist.from_bins(edges, [10, 20, 40, 20, 8, 2], mean=1200.0, m2=3.0e6)
    assert d.mean == pytest.approx(1200.0)
    assert d.m2 == pytest.approx(3.0e6)
    rough = LengthDist.from_bins(edges, [0, 0, 1, 0, 0, 0])
    assert 512 < rough.mean <= 1024


def test_bad_distributions_raise() -> None:
    with pytest.raises(DopdError):
        LengthDist((1.0, 2.0), (0.5, 0.6))
    with pytest.raises(DopdError):
        LengthDist((2.0, 1.0), (0.5, 0.5))
    with pytest.raises(DopdError):
        LengthDist.from_samples([])
    with pytest.raises(DopdError):
        LengthDist.from_moments(100.0, 50.0)
    with pytest.raises(DopdError):
        LengthDist.lognormal(-1.0, 1.0)


def _poisson_workload(rate: float, n: int, seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1 / rate, n))
    prompt = rng.integers(100, 3000, n)
    output = rng.integers(1, 400, n)
    return Workload.from_arrays("poisson", t - t[0], prompt, output)


def test_from_workload_measures_rate_lengths_and_joint_moment() -> None:
    w = _poisson_workload(5.0, 20_000)
    s = WorkloadStats.from_workload(w)
    assert s.rate == pytest.approx(5.0, rel=0.03)
    assert s.isl.mean == pytest.approx(w.prompt_tokens.mean())
    assert s.osl.m2 == pytest.approx(np.mean(w.output_tokens.astype(float) ** 2))
    assert s.cross_mean == pytest.approx(np.mean(w.prompt_tokens * w.output_tokens.astype(float)))
    assert s.arrival_scv == pytest.approx(1.0, abs=0.1)
    # A stationary Poisson stream keeps (almost) flat levels once the sampling noise is removed.
    assert max(s.rate_levels) < 1.1 and min(s.rate_levels) > 0.9
    assert WorkloadStats.from_workload(w, rate_scale=2.0).rate == pytest.approx(2 * s.rate)


def test_levels_are_invariant_to_time_scaling() -> None:
    w = _poisson_workload(3.0, 5000, seed=2)
    a = WorkloadStats.from_workload(w)
    b = WorkloadStats.from_workload(w.scale_rate(4.0))
    assert b.rate == pytest.approx(4 * a.rate)
    assert b.rate_levels == pytest.approx(a.rate_levels)
    assert b.arrival_scv == pytest.approx(a.arrival_scv)


def test_on_off_arrivals_give_spread_levels() -> None:
    rng = np.random.default_rng(1)
    chunks = []
    t0 = 0.0
    for _ in range(20):  # 60 s at 10 req/s, then 60 s at 1 req/s
        for rate in (10.0, 1.0):
            n = rng.poisson(rate * 60)
            chunks.append(np.sort(rng.uniform(t0, t0 + 60, n)))
            t0 += 60
    t = np.concatenate(chunks)
    levels, weights = rate_levels(t)
    assert max(levels) / min(levels) > 4
    assert sum(weights) == pytest.approx(1.0)
    # Requests mostly see the busy level.
    assert float(np.dot(levels, weights)) > 1.3


def test_burstiness_detects_clumps() -> None:
    rng = np.random.default_rng(3)
    poisson = np.cumsum(rng.exponential(1.0, 30_000))
    clumped = np.repeat(np.cumsum(rng.exponential(3.0, 10_000)), 3)
    assert burstiness(poisson) == pytest.approx(1.0, abs=0.1)
    assert burstiness(clumped) == pytest.approx(3.0, rel=0.15)


def test_series_conserves_requests_and_length_sums() -> None:
    w = _poisson_workload(8.0, 3000, seed=4)
    series = arrival_series(w.arrival_s, w.prompt_tokens)
    p = w.prompt_tokens.astype(float)
    assert series.counts.sum() == len(w)
    assert series.sum_n.sum() == pytest.approx(p.sum())
    assert series.sum_n2.sum() == pytest.approx((p * p).sum())
    assert series.window_requests == pytest.approx(len(w) / series.size)
    assert series.weights.sum() == pytest.approx(1.0)


def test_forecast_window_and_dispatch() -> None:
    fc = LoadForecast(rate=4.0, rate_upper=6.0, mean_in=1000.0, m2_in=2.0e6, mean_out=200.0,
                      m2_out=6.0e4)
    s = as_stats(fc)
    assert (s.rate, s.peak_rate) == (4.0, 6.0)
    assert s.isl.mean == pytest.approx(1000.0) and s.isl.m2 == pytest.approx(2.0e6)
    assert s.osl.cv == pytest.approx(math.sqrt(6.0e4 / 200.0**2 - 1))

    monitor = ArrivalMonitor(window_s=10.0, start_s=0.0)
    rng = np.random.default_rng(5)
    for i, n in enumerate(rng.integers(100, 5000, 100)):
        monitor.observe_arrival(0.1 * i, int(n))
        monitor.observe_output(0.1 * i, int(n) // 10 + 1)
    snap = monitor.snapshot(10.0)
    ws = as_stats(snap)
    assert ws.rate == pytest.approx(snap.rate_rps)
    assert ws.isl.mean == pytest.approx(snap.mean_in)
    assert ws.isl.m2 == pytest.approx(snap.m2_in)
    assert isinstance(as_stats(_poisson_workload(2.0, 100)), WorkloadStats)
    with pytest.raises(DopdError):
        as_stats(42)


def test_invalid_stats_raise() -> None:
    isl, osl = LengthDist.point(100.0), LengthDist.point(10.0)
    with pytest.raises(DopdError):
        WorkloadStats(0.0, isl, osl)
    with pytest.raises(DopdError):
        WorkloadStats(2.0, isl, osl, rate_upper=1.0)
    with pytest.raises(DopdError):
        WorkloadStats(2.0, isl, osl, rate_levels=(1.0, 2.0), rate_weights=(0.5, 0.6))
    with pytest.raises(DopdError):
        WorkloadStats(2.0, LengthDist.point(0.5), osl)


def test_without_variance_collapses_prompt_lengths() -> None:
    s = WorkloadStats.from_moments(2.0, 1000.0, 2.0, 100.0, 1.0)
    flat = s.without_variance()
    assert flat.isl.mean == pytest.approx(1000.0)
    assert flat.isl.var == pytest.approx(0.0, abs=1e-6)
    assert flat.osl == s.osl
