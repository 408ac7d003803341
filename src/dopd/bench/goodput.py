"""Max goodput: the largest load at which SLO attainment stays at or above a target.

The search treats ``run(rate_scale) -> attainment`` as a black box (typically: scale a trace's
rate by ``rate_scale``, simulate, return the attainment) and assumes attainment is roughly
non-increasing in load. It keeps a bracket ``lo`` (attainment >= target) < ``hi`` (attainment <
target): first it grows ``hi`` geometrically (x2) until it misses the target, then it bisects
the bracket at the geometric mean until ``(hi - lo) / lo <= rel_tol``. No scale is run twice.

When attainment is not monotone the result is still a scale that meets the target with a scale
at most ``rel_tol`` above it that does not, but it may not be the largest such boundary;
``MaxGoodputResult.monotone`` reports whether the observed history was non-increasing.
When even ``lo`` misses the target the search stops: ``rate_scale`` is 0.0 and ``feasible``
is False (no exception, so sweeps over configurations can go on).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

from dopd.errors import DopdError, require

_GROWTH = 2.0


@dataclass(frozen=True, slots=True)
class MaxGoodputResult:
    """Outcome of :func:`max_goodput`.

    ``rate_scale`` is the largest scale seen to meet the target (0.0 when none did); ``lo`` /
    ``hi`` the final bracket (``hi`` is None when no scale missed the target); ``history``
    every ``(scale, attainment)`` run, in run order; ``converged`` whether the bracket reached
    ``rel_tol`` within ``max_runs``.
    """

    rate_scale: float
    runs: int
    history: tuple[tuple[float, float], ...]
    converged: bool
    feasible: bool
    lo: float
    hi: float | None
    target: float
    monotone: bool

    def goodput_rps(self, base_rate_rps: float) -> float:
        """Max goodput in requests per second for a workload whose unscaled rate is given."""
        return self.rate_scale * base_rate_rps


def _is_monotone(history: list[tuple[float, float]], slack: float = 1e-9) -> bool:
    ordered = sorted(history)
    return all(b[1] <= a[1] + slack for a, b in pairwise(ordered))


def max_goodput(
    run: Callable[[float], float],
    target: float,
    lo: float,
    hi: float | None = None,
    rel_tol: float = 0.02,
    max_runs: int = 30,
) -> MaxGoodputResult:
    """Largest ``rate_scale`` in ``[lo, inf)`` with ``run(rate_scale) >= target`` (see module doc).

    ``lo`` > 0 is the smallest scale tried; ``hi`` (> ``lo``), if given, is the first guess of
    a scale that misses the target (grown x2 while it does not). ``run`` must return an
    attainment in [0, 1]. Raises :class:`DopdError` on invalid arguments or a bad attainment.
    """
    require(0 < target <= 1, f"attainment target must be in (0, 1], got {target}")
    require(math.isfinite(lo) and lo > 0, f"lo must be > 0, got {lo}")
    require(hi is None or (math.isfinite(hi) and hi > lo), f"hi must be > lo, got {hi}")
    require(rel_tol > 0, f"rel_tol must be > 0, got {rel_tol}")
    require(max_runs >= 2, f"max_runs must be >= 2, got {max_runs}")
    history: list[tuple[float, float]] = []

    def attained(scale: float) -> bool:
        value = float(run(scale))
        if not (0.0 <= value <= 1.0):
            raise DopdError(f"run({scale:g}) returned attainment {value}, expected [0, 1]")
        history.append((scale, value))
        return value >= target

    def result(
        best: float, upper: float | None, converged: bool, feasible: bool
    ) -> MaxGoodputResult:
        return MaxGoodputResult(
            rate_scale=best, runs=len(history), history=tuple(history), converged=converged,
            feasible=feasible, lo=best if feasible else lo, hi=upper, target=target,
            monotone=_is_monotone(history),
        )

    if not attained(lo):
        return result(0.0, lo, converged=False, feasible=False)
    upper = hi if hi is not None else lo * _GROWTH
    while attained(upper):
        lo = upper
        if len(history) >= max_runs:
            return result(lo, None, converged=False, feasible=True)
        upper *= _GROWTH
    while (upper - lo) / lo > rel_tol:
        if len(history) >= max_runs:
            return result(lo, upper, converged=False, feasible=True)
        mid = math.sqrt(lo * upper)
        if attained(mid):
            lo = mid
        else:
            upper = mid
    return result(lo, upper, converged=True, feasible=True)
