"""``scan_max_goodput``: a coarse scan, then bisection at the highest crossing; a light-load miss
gives 0, every crossing and monotonicity are reported."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dopd.bench.goodput import DEFAULT_SCAN, scan_max_goodput
from dopd.errors import DopdError


def step(threshold: float) -> Callable[[float], float]:
    """Attainment 0.99 up to ``threshold``, 0.5 above it."""
    return lambda s: 0.99 if s <= threshold else 0.5


def test_default_scan_spans_an_eighth_to_four_times() -> None:
    assert DEFAULT_SCAN[0] == 0.125 and DEFAULT_SCAN[-1] == 4.0 and len(DEFAULT_SCAN) == 8


def test_monotone_curve_bisects_to_the_threshold() -> None:
    r = scan_max_goodput(step(1.3), 0.9, rel_tol=0.01, max_bisect=20)
    assert r.feasible and not r.light_load_failure and r.monotone and not r.capped
    assert r.converged and 1.3 / 1.01 <= r.rate_scale <= 1.3
    assert len(r.crossings) == 1 and r.crossings[0].down
    assert r.crossings[0].lo <= 1.3 < r.crossings[0].hi
    assert list(r.history) == sorted(r.history)


def test_a_miss_at_the_lowest_load_gives_zero_and_is_flagged() -> None:
    curve = {0.125: 0.85, 0.2051: 0.92, 0.3365: 0.95}
    r = scan_max_goodput(lambda s: curve.get(s, 0.93 if s < 2 else 0.2), 0.9)
    assert r.rate_scale == 0.0 and not r.feasible and r.light_load_failure
    assert r.crossings[0].lo == 0.125 and not r.crossings[0].down  # up-crossing reported
    assert not r.monotone
    # the bisection of max_goodput would have hidden it: it starts where the curve is fine


def test_non_monotone_curve_bisects_at_the_highest_crossing() -> None:
    def curve(s: float) -> float:
        if s < 0.3:
            return 0.95
        if s < 0.5:
            return 0.8  # a dip
        return 0.95 if s <= 1.7 else 0.3

    r = scan_max_goodput(curve, 0.9, rel_tol=0.01, max_bisect=20)
    assert not r.monotone and not r.light_load_failure
    assert [c.down for c in r.crossings] == [True, False, True]
    assert 1.7 / 1.01 <= r.rate_scale <= 1.7


def test_scan_stops_after_consecutive_misses() -> None:
    r = scan_max_goodput(step(0.15), 0.9, stop_after=2, max_bisect=0)
    assert r.scan == DEFAULT_SCAN[:3]  # meets at 0.125, misses twice, stops
    assert r.rate_scale == 0.125 and not r.converged


def test_scan_extends_while_the_target_holds_and_caps() -> None:
    r = scan_max_goodput(step(9.0), 0.9, rel_tol=0.05, max_bisect=10)
    assert r.scan[-1] > 4.0 and not r.capped and 9.0 / 1.05 <= r.rate_scale <= 9.0
    always = scan_max_goodput(lambda s: 1.0, 0.9, extend=2)
    assert always.capped and len(always.scan) == len(DEFAULT_SCAN) + 2
    assert always.rate_scale == always.scan[-1]


def test_to_dict_has_every_crossing() -> None:
    data = scan_max_goodput(step(1.0), 0.9).to_dict()
    assert data["crossings"][0]["direction"] == "down" and data["monotone"] is True
    assert data["light_load_failure"] is False and len(data["history"]) >= len(data["scan"])


@pytest.mark.parametrize("kwargs", [
    {"target": 0.0}, {"scales": (1.0,)}, {"scales": (2.0, 1.0)}, {"rel_tol": 0.0},
    {"stop_after": 0}, {"extend": -1},
])
def test_bad_arguments_raise(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"run": step(1.0), "target": 0.9, **kwargs}
    with pytest.raises(DopdError):
        scan_max_goodput(**args)  # type: ignore[arg-type]


def test_bad_attainment_raises() -> None:
    with pytest.raises(DopdError, match="attainment"):
        scan_max_goodput(lambda s: 1.5, 0.9)
