"""What the live controller measures for the dashboard: arrivals and request outcomes over time.

:class:`OutcomeLog` keeps the arrival times and the end of every request (finished or not,
its TTFT and TPOT, whether it met the SLO) of the last ``horizon_s`` seconds on the monotonic
clock, and summarises any interval of them (:meth:`OutcomeLog.summary`): P50/P90 latency, SLO
attainment, goodput, arrival rate. The summaries are frozen dataclasses, sent as JSON by
``/v1/cluster``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from dopd.types import SLO, RequestOutcome, RequestState

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class OutcomeStats:
    """Requests that ended in ``[start, end]`` (seconds on the controller's clock; ``window_s``
    = end - start). ``finished`` of the ``ended`` ones finished (the rest were rejected or
    aborted). Latency percentiles are over the finished requests (None when there are none);
    ``attainment`` is the share of the ended requests that finished within both SLOs (None
    when none ended or there is no SLO); ``goodput_rps`` those per second;
    ``arrival_rps`` requests arrived per second."""

    start: float
    end: float
    window_s: float
    ended: int
    finished: int
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    tpot_p50_s: float | None
    tpot_p90_s: float | None
    attainment: float | None
    goodput_rps: float | None
    arrival_rps: float


def _between(items: deque[T], start: float, end: float, time_of: Callable[[T], float]
             ) -> list[T]:
    """The items (in time order) of ``[start, end]``, scanning back from the newest: a recent
    window costs its own size, not the horizon's."""
    out = []
    for item in reversed(items):
        t = time_of(item)
        if t < start:
            break
        if t <= end:
            out.append(item)
    out.reverse()
    return out


def _quantile(values: np.ndarray, q: float) -> float | None:
    values = values[np.isfinite(values)]
    return float(np.quantile(values, q)) if values.size else None


class OutcomeLog:
    """Arrivals and ends of requests of the last ``horizon_s`` seconds (see the module doc);
    times are ``time.monotonic()`` values, ``t0`` the controller's start on that clock."""

    def __init__(self, slo: SLO | None, horizon_s: float = 600.0) -> None:
        self.slo = slo
        self.horizon_s = horizon_s
        self._arrivals: deque[float] = deque()
        # (end time, finished, ttft or nan, tpot or nan, met the SLO)
        self._ends: deque[tuple[float, bool, float, float, bool]] = deque()

    def arrival(self, t: float) -> None:
        """A request arrived at ``t``."""
        self._arrivals.append(t)

    def end(self, t: float, outcome: RequestOutcome) -> None:
        """A request ended at ``t`` with ``outcome``."""
        finished = outcome.state == RequestState.FINISHED
        ttft, tpot = outcome.ttft_s, outcome.tpot_s
        met = finished and self.slo is not None and ttft is not None \
            and ttft <= self.slo.ttft_s and (tpot is None or tpot <= self.slo.tpot_s)
        self._ends.append((t, finished, math.nan if ttft is None else ttft,
                           math.nan if tpot is None else tpot, met))

    def evict(self, now: float) -> None:
        """Forget what is older than the horizon."""
        cutoff = now - self.horizon_s
        while self._arrivals and self._arrivals[0] < cutoff:
            self._arrivals.popleft()
        while self._ends and self._ends[0][0] < cutoff:
            self._ends.popleft()

    def summary(self, start: float, end: float, t0: float = 0.0) -> OutcomeStats:
        """:class:`OutcomeStats` of ``[start, end]`` (monotonic times; reported minus ``t0``)."""
        window = max(end - start, 1e-9)
        rows = _between(self._ends, start, end, lambda e: e[0])
        arrived = len(_between(self._arrivals, start, end, lambda a: a))
        done = [r for r in rows if r[1]]
        ttft = np.array([r[2] for r in done], dtype=np.float64)
        tpot = np.array([r[3] for r in done], dtype=np.float64)
        met = sum(1 for r in rows if r[4])
        has_slo = self.slo is not None and bool(rows)
        return OutcomeStats(
            start=round(start - t0, 3), end=round(end - t0, 3), window_s=round(window, 3),
            ended=len(rows), finished=len(done), ttft_p50_s=_quantile(ttft, 0.5),
            ttft_p90_s=_quantile(ttft, 0.9), tpot_p50_s=_quantile(tpot, 0.5),
            tpot_p90_s=_quantile(tpot, 0.9),
            attainment=met / len(rows) if has_slo else None,
            goodput_rps=met / window if self.slo is not None else None,
            arrival_rps=arrived / window)
