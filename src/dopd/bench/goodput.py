"""Max goodput: the largest load at which SLO attainment stays at or above a target.

Two searches: :func:`max_goodput` (grow, then bisect: fast, but a miss at light load can hide
behind a success at a higher one when attainment is not monotone) and
:func:`scan_max_goodput` (a coarse scan of the load range, then bisection at the highest
crossing; a light-load miss gives 0, every crossing and monotonicity are reported). The rest of
this docstring is about :func:`max_goodput`.

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


# --------------------------------------------------------------------------------------------
# Scan, then bisect at the highest crossing: a search that cannot hide a light-load failure.

DEFAULT_SCAN = tuple(round(0.125 * 2 ** (k * 5 / 7), 4) for k in range(8))
"""Eight scales from 0.125 to 4, geometric (x 1.64 each)."""

MONOTONE_SLACK = 0.01
"""A rise of attainment with load by more than this (1 percentage point) is non-monotone."""


@dataclass(frozen=True, slots=True)
class Crossing:
    """Two adjacent scan points between which attainment crosses the target: ``down`` (meets
    at ``lo``, misses at ``hi``) or up (misses at ``lo``, meets at ``hi``)."""

    lo: float
    hi: float
    down: bool


@dataclass(frozen=True, slots=True)
class ScanResult:
    """Outcome of :func:`scan_max_goodput`.

    ``rate_scale`` is the highest scale known to meet the target, refined by bisection above the
    highest scan point that meets it; 0.0 when the lowest scale misses (``light_load_failure``:
    the policy fails at light load, whatever it does at heavier loads). ``capped`` when even the
    highest scan point (extensions included) meets the target (the answer is a lower bound).
    ``scan`` holds the scan points run, ascending (the scan stops after ``stop_after``
    consecutive misses);
    ``history`` every ``(scale, attainment)`` run, ascending by scale; ``crossings`` every
    crossing of the target between adjacent scan points; ``monotone`` whether attainment never
    rose with load by more than :data:`MONOTONE_SLACK` over the whole history.
    """

    rate_scale: float
    target: float
    feasible: bool
    light_load_failure: bool
    capped: bool
    converged: bool
    monotone: bool
    scan: tuple[float, ...]
    crossings: tuple[Crossing, ...]
    history: tuple[tuple[float, float], ...]

    @property
    def runs(self) -> int:
        return len(self.history)

    def attainment_at(self, scale: float) -> float | None:
        """The attainment measured at ``scale`` (None when that scale was not run)."""
        for s, a in self.history:
            if s == scale:
                return a
        return None

    def to_dict(self) -> dict[str, object]:
        """Plain data for JSON reports."""
        return {
            "rate_scale": self.rate_scale, "target": self.target, "feasible": self.feasible,
            "light_load_failure": self.light_load_failure, "capped": self.capped,
            "converged": self.converged, "monotone": self.monotone, "scan": list(self.scan),
            "crossings": [{"lo": c.lo, "hi": c.hi, "direction": "down" if c.down else "up"}
                          for c in self.crossings],
            "history": [[s, a] for s, a in self.history],
        }


def scan_max_goodput(
    run: Callable[[float], float],
    target: float,
    scales: tuple[float, ...] = DEFAULT_SCAN,
    rel_tol: float = 0.05,
    max_bisect: int = 6,
    stop_after: int = 2,
    extend: int = 4,
) -> ScanResult:
    """Max goodput by a coarse scan of ``scales`` (ascending), then a geometric bisection
    between the highest scan point that meets ``target`` and the next one up, until the bracket
    is within ``rel_tol`` or ``max_bisect`` more runs were made.

    Unlike :func:`max_goodput`, a miss at the lowest scale is never hidden by a success higher
    up: the result is 0 and ``light_load_failure`` is set; a non-monotone curve is reported with
    every crossing. The scan stops after ``stop_after`` consecutive misses (attainment that
    recovers at several times the load where it collapsed is not looked for); when the highest
    scale still meets the target, up to ``extend`` more scales continue the geometric grid until
    one misses (``capped`` when none does). ``run`` returns
    an attainment in [0, 1]; DopdError on invalid arguments or a bad attainment.
    """
    require(0 < target <= 1, f"attainment target must be in (0, 1], got {target}")
    require(len(scales) >= 2, "a scan needs at least 2 scales")
    require(all(math.isfinite(s) and s > 0 for s in scales), "scan scales must be > 0")
    require(all(a < b for a, b in pairwise(scales)), "scan scales must ascend")
    require(rel_tol > 0, f"rel_tol must be > 0, got {rel_tol}")
    require(max_bisect >= 0 and stop_after >= 1 and extend >= 0,
            "max_bisect and extend must be >= 0, stop_after >= 1")
    seen: dict[float, float] = {}

    def attainment(scale: float) -> float:
        if scale not in seen:
            value = float(run(scale))
            if not (0.0 <= value <= 1.0):
                raise DopdError(f"run({scale:g}) returned attainment {value}, expected [0, 1]")
            seen[scale] = value
        return seen[scale]

    scanned: list[float] = []
    misses = 0
    step = scales[-1] / scales[-2]
    grid = list(scales) + [scales[-1] * step ** (k + 1) for k in range(extend)]
    for index, scale in enumerate(grid):
        if index >= len(scales) and misses > 0:
            break  # past the given scales only while the target is still met
        scanned.append(scale)
        misses = misses + 1 if attainment(scale) < target else 0
        if misses >= stop_after:
            break
    crossings = tuple(
        Crossing(a, b, down=seen[a] >= target)
        for a, b in pairwise(scanned) if (seen[a] >= target) != (seen[b] >= target))
    light = seen[scanned[0]] < target
    meeting = [s for s in scanned if seen[s] >= target]
    best, converged, capped = 0.0, False, False
    if not light and meeting:
        lo = meeting[-1]
        above = [s for s in scanned if s > lo]
        if not above:
            best, capped, converged = lo, True, False
        else:
            hi = above[0]
            for _ in range(max_bisect):
                if (hi - lo) / lo <= rel_tol:
                    break
                mid = math.sqrt(lo * hi)
                if attainment(mid) >= target:
                    lo = mid
                else:
                    hi = mid
            best, converged = lo, (hi - lo) / lo <= rel_tol
    history = tuple(sorted(seen.items()))
    monotone = all(b[1] <= a[1] + MONOTONE_SLACK for a, b in pairwise(history))
    return ScanResult(rate_scale=best, target=target, feasible=best > 0,
                      light_load_failure=light, capped=capped, converged=converged,
                      monotone=monotone, scan=tuple(scanned), crossings=crossings,
                      history=history)
