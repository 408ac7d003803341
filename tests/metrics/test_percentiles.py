"""Honest percentiles: the interpolation rule at the finite/infinite boundary, populations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dopd.metrics.percentiles import (
    honest_latencies,
    honest_percentiles,
    served_percentiles,
    unreached_share,
)
from dopd.types import RequestState

INF = math.inf
NAN = math.nan
QS = (0, 10, 50, 89.9, 90, 95, 99, 100)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_without_infinite_members_equals_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.lognormal(0, 1, int(rng.integers(1, 400)))
    with_gaps = np.concatenate([values, np.full(7, NAN)])  # NaN: not a member
    assert honest_percentiles(with_gaps, QS) == pytest.approx(np.percentile(values, QS).tolist())
    assert served_percentiles(with_gaps, QS) == pytest.approx(np.percentile(values, QS).tolist())


def test_ten_percent_unreached_makes_p90_a_miss() -> None:
    # n = 10, k = 9: P90 sits at virtual index 8.1, between the largest finite value and inf.
    values = np.array([*range(1, 10), INF], dtype=float)
    p50, p89, p90, p99 = honest_percentiles(values, (50, 88.8, 90, 99))
    assert p50 == pytest.approx(np.percentile(np.arange(1, 11), 50))
    assert p89 == pytest.approx(8.992)  # index 7.992: both neighbours finite
    assert p90 == INF and p99 == INF
    assert served_percentiles(values, (90,)) == pytest.approx([8.2])


def test_exact_hit_on_the_last_finite_value_is_finite() -> None:
    # n = 11, k = 10: P90 is exactly index 9, the largest finite value; P91 touches inf.
    values = np.array([*range(1, 11), INF], dtype=float)
    assert honest_percentiles(values, (90, 91)) == [10.0, INF]


def test_rejections_move_the_p90() -> None:
    served = np.linspace(0.1, 0.4, 90)  # served requests: P90 near 0.37
    before = honest_percentiles(served, (90,))[0]
    with_rejected = np.concatenate([served, np.full(5, INF)])  # 5 % rejected
    after = honest_percentiles(with_rejected, (90,))[0]
    assert before is not None and after is not None
    assert after > before  # the rejected requests sit at the top and push the P90 up
    assert after == pytest.approx(float(np.percentile(np.concatenate([served, [1e9] * 5]), 90)))
    assert served_percentiles(with_rejected, (90,))[0] == pytest.approx(before)


def test_empty_and_all_infinite_populations() -> None:
    assert honest_percentiles(np.array([NAN, NAN]), (50, 90)) == [None, None]
    assert honest_percentiles(np.array([INF, INF, NAN]), (0, 50)) == [INF, INF]
    assert served_percentiles(np.array([INF, NAN]), (50,)) == [None]
    assert unreached_share(np.array([NAN])) == 0.0
    assert unreached_share(np.array([1.0, INF, NAN, INF])) == pytest.approx(2 / 3)


def test_populations_by_request_state() -> None:
    s = RequestState
    state = np.array([s.FINISHED, s.FINISHED, s.REJECTED, s.ABORTED, s.DECODING, s.WAITING,
                      s.ABORTED])
    output = np.array([5, 1, 5, 5, 5, 5, 1])
    first = np.array([1.0, 1.0, NAN, 2.0, 2.0, NAN, 3.0])
    ttft = np.array([0.5, 0.2, NAN, 0.3, 0.4, NAN, 0.6])
    tpot = np.array([0.05, NAN, NAN, NAN, NAN, NAN, NAN])
    e2e = np.array([0.7, 0.2, NAN, NAN, NAN, NAN, 0.9])  # the aborted one-token has a finish
    h = honest_latencies(ttft, tpot, e2e, first, output, state)
    np.testing.assert_array_equal(h.ttft_s, [0.5, 0.2, INF, 0.3, 0.4, INF, 0.6])
    np.testing.assert_array_equal(h.tpot_s, [0.05, NAN, NAN, INF, INF, NAN, NAN])
    np.testing.assert_array_equal(h.e2e_s, [0.7, 0.2, INF, INF, INF, INF, INF])
