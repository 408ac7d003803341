"""max_goodput on analytic attainment curves."""

from __future__ import annotations

import math

import pytest

from dopd.bench import max_goodput
from dopd.errors import DopdError


def step_at(x0: float, below: float = 1.0, above: float = 0.5):
    calls: list[float] = []

    def run(scale: float) -> float:
        calls.append(scale)
        return below if scale <= x0 else above

    return run, calls


@pytest.mark.parametrize(
    ("x0", "lo", "hi"), [(3.7, 0.5, None), (3.7, 0.1, 100.0), (0.31, 0.25, 0.3), (57.0, 1.0, None)]
)
def test_step_function_found_within_2_percent(x0: float, lo: float, hi: float | None) -> None:
    run, calls = step_at(x0)
    result = max_goodput(run, target=0.9, lo=lo, hi=hi, rel_tol=0.02)
    assert result.feasible and result.converged and result.monotone
    assert x0 / 1.02 <= result.rate_scale <= x0
    assert result.hi is not None and result.hi > x0 and (result.hi - result.lo) / result.lo <= 0.02
    assert result.runs == len(calls) == len(set(calls)) <= 16
    assert [s for s, _ in result.history] == calls
    assert result.goodput_rps(10.0) == pytest.approx(10 * result.rate_scale)


def test_linear_attainment_curve() -> None:
    result = max_goodput(lambda s: max(0.0, 1 - 0.01 * s), target=0.9, lo=1.0, rel_tol=0.01)
    assert 10 / 1.01 <= result.rate_scale <= 10.0 + 1e-9
    assert all(att >= 0.9 for s, att in result.history if s <= result.rate_scale)


def test_infeasible_lower_bound_returns_zero_with_flag() -> None:
    result = max_goodput(lambda s: 0.5, target=0.9, lo=1.0)
    assert result.rate_scale == 0.0 and not result.feasible and not result.converged
    assert result.runs == 1 and result.history == ((1.0, 0.5),)


def test_run_budget_exhausted() -> None:
    result = max_goodput(lambda s: 1.0, target=0.99, lo=1.0, max_runs=5)
    assert not result.converged and result.feasible and result.hi is None
    assert result.runs == 5 and result.rate_scale == 16.0
    run, _ = step_at(3.7)
    result = max_goodput(run, target=0.9, lo=1.0, rel_tol=1e-6, max_runs=8)
    assert not result.converged and result.runs == 8 and result.rate_scale <= 3.7


def test_non_monotone_curve_is_reported() -> None:
    # Feasible below 2, infeasible on (2, 5], feasible again above 5.
    def bumpy(scale: float) -> float:
        return 0.95 if scale <= 2 or scale > 5 else 0.5

    result = max_goodput(bumpy, target=0.9, lo=1.0, hi=3.0)
    assert result.converged and 2 / 1.02 <= result.rate_scale <= 2
    assert result.monotone  # the search never saw the far region
    result = max_goodput(bumpy, target=0.9, lo=1.0, hi=8.0)
    assert result.rate_scale > 5  # it grew past the dip without seeing it: a later boundary

    def rising_then_falling(scale: float) -> float:  # attainment rises before it falls
        return 0.95 if scale <= 2 else (0.99 if scale <= 4 else 0.5)

    result = max_goodput(rising_then_falling, target=0.9, lo=1.0)
    assert not result.monotone and 4 / 1.02 <= result.rate_scale <= 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": 0.0, "lo": 1.0}, "target"),
        ({"target": 0.9, "lo": 0.0}, "lo"),
        ({"target": 0.9, "lo": 1.0, "hi": 1.0}, "hi"),
        ({"target": 0.9, "lo": 1.0, "rel_tol": 0.0}, "rel_tol"),
        ({"target": 0.9, "lo": 1.0, "max_runs": 1}, "max_runs"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(DopdError, match=message):
        max_goodput(lambda s: 1.0, **kwargs)


@pytest.mark.parametrize("value", [1.5, -0.1, math.nan])
def test_bad_attainment_values(value: float) -> None:
    with pytest.raises(DopdError, match="attainment"):
        max_goodput(lambda s: value, target=0.9, lo=1.0)
