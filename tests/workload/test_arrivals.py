"""Arrival processes: determinism, exact counts and their statistics against theory."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from scipy import stats

from dopd.errors import DopdError
from dopd.workload import ArrivalProcess, Diurnal, Gamma, OnOff, Poisson, Replay, StepRate

PROCESSES = [
    Poisson(20.0),
    Gamma(20.0, 3.0),
    Gamma(20.0, 0.5),
    OnOff(40.0, 2.0, 10.0, 30.0),
    OnOff(40.0, 0.0, 5.0, 5.0, start_on=False),
    StepRate((0.0, 60.0, 120.0), (10.0, 20.0, 5.0)),
    Diurnal(10.0, 0.8, 100.0, 0.25),
]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("process", PROCESSES, ids=repr)
def test_deterministic_sorted_and_bounded(process: ArrivalProcess) -> None:
    a = process.sample(rng(7), duration_s=300.0)
    b = process.sample(rng(7), duration_s=300.0)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float64 and np.all(np.diff(a) >= 0)
    assert a.size > 0 and a[0] >= 0 and a[-1] < 300.0
    assert not np.array_equal(a, process.sample(rng(8), duration_s=300.0))
    c = process.sample(rng(7), count=2500)
    assert c.size == 2500 and np.all(np.diff(c) >= 0) and c[0] >= 0
    np.testing.assert_array_equal(c, process.sample(rng(7), count=2500))
    assert process.sample(rng(7), count=0).size == 0


@pytest.mark.parametrize("process", PROCESSES, ids=repr)
def test_mean_count_matches_expected_count(process: ArrivalProcess) -> None:
    duration = 200.0
    counts = np.array([process.sample(rng(s), duration_s=duration).size for s in range(200)])
    expected = process.expected_count(duration)
    # Standard error of the mean of 200 runs, with a generous allowance for overdispersion.
    assert abs(counts.mean() - expected) < 5 * counts.std(ddof=1) / np.sqrt(200) + 1e-9


def test_poisson_and_gamma_gaps_follow_their_distribution() -> None:
    gaps = np.diff(Poisson(5.0).sample(rng(1), count=5000))
    assert stats.kstest(gaps, "expon", args=(0, 1 / 5.0)).pvalue > 0.01
    cv = 3.0
    shape = 1 / cv**2
    gaps = np.diff(Gamma(5.0, cv).sample(rng(2), count=20000))
    # Not a KS test: with shape 1/9 about 4% of gaps are below float64 resolution at t ~ 1e3 s,
    # so compare the empirical CDF at quantiles well above it.
    probs = np.array([0.2, 0.4, 0.6, 0.8, 0.95])
    points = stats.gamma.ppf(probs, shape, scale=1 / (5.0 * shape))
    observed = (gaps[:, None] <= points[None, :]).mean(axis=0)
    np.testing.assert_allclose(observed, probs, atol=0.015)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.1)


def test_step_rate_per_segment_and_count_mode() -> None:
    process = StepRate.of([(0.0, 10.0), (60.0, 40.0), (120.0, 0.0), (150.0, 5.0)])
    times = np.concatenate([process.sample(rng(s), duration_s=200.0) for s in range(50)])
    edges = [0.0, 60.0, 120.0, 150.0, 200.0]
    per_run = np.histogram(times, edges)[0] / 50
    np.testing.assert_allclose(per_run, [600, 2400, 0, 250], rtol=0.05, atol=1e-9)
    rates = process.rate_at(np.array([0.0, 59.9, 60.0, 130.0]))
    np.testing.assert_array_equal(rates, [10, 10, 40, 0])
    late = StepRate((0.0, 10.0), (0.0, 5.0)).sample(rng(3), count=100)
    assert late[0] >= 10.0
    with pytest.raises(DopdError, match="rate 0"):
        StepRate((0.0, 10.0), (5.0, 0.0)).sample(rng(), count=10)


def test_diurnal_follows_its_intensity() -> None:
    process = Diurnal(20.0, 0.9, 100.0, phase=0.25)  # peak at t=0, trough at t=50
    times = np.concatenate([process.sample(rng(s), duration_s=100.0) for s in range(40)])
    edges = np.linspace(0, 100, 11)
    observed = np.histogram(times, edges)[0] / 40
    expected = [process.expected_count(b) - process.expected_count(a)
                for a, b in pairwise(edges)]
    np.testing.assert_allclose(observed, expected, rtol=0.1)
    assert observed[0] > 5 * observed[5]


def test_onoff_is_bursty() -> None:
    process = OnOff(50.0, 0.0, 2.0, 8.0)
    times = process.sample(rng(4), duration_s=3000.0)
    assert process.mean_rate == pytest.approx(10.0)
    per_second = np.bincount(times.astype(int), minlength=3000)
    assert per_second.var() / per_second.mean() > 5  # Poisson would be 1
    gaps = np.diff(times)
    assert gaps.std() / gaps.mean() > 2


def test_count_mode_matches_duration_mode_in_distribution() -> None:
    process = OnOff(30.0, 3.0, 4.0, 6.0)
    ends = np.array([process.sample(rng(s), count=300)[-1] for s in range(300)])
    # Time of the 300th arrival vs. duration mode: P(N(T) >= 300) = P(t_300 <= T).
    t = float(np.median(ends))
    reached = np.mean([process.sample(rng(1000 + s), duration_s=t).size >= 300
                       for s in range(300)])
    assert reached == pytest.approx(0.5, abs=0.1)


def test_replay_and_validation() -> None:
    replay = Replay(np.array([0.0, 1.0, 2.5, 7.0]))
    np.testing.assert_array_equal(replay.sample(rng(), duration_s=2.5), [0.0, 1.0])
    np.testing.assert_array_equal(replay.sample(rng(), count=3), [0.0, 1.0, 2.5])
    with pytest.raises(DopdError, match="4 arrivals"):
        replay.sample(rng(), count=5)
    with pytest.raises(DopdError, match="exactly one"):
        Poisson(1.0).sample(rng())
    with pytest.raises(DopdError, match="exactly one"):
        Poisson(1.0).sample(rng(), duration_s=1.0, count=1)
    with pytest.raises(DopdError, match="duration"):
        Poisson(1.0).sample(rng(), duration_s=-1.0)
    for make in (lambda: Poisson(0.0), lambda: Gamma(1.0, 0.0), lambda: OnOff(0.0, 1, 1, 1),
                 lambda: StepRate((1.0,), (1.0,)), lambda: StepRate((0.0, 0.0), (1.0, 1.0)),
                 lambda: Diurnal(1.0, 1.5, 10.0), lambda: Replay(np.array([2.0, 1.0]))):
        with pytest.raises(DopdError):
            make()
