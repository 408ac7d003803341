"""SLO metrics of a run (DESIGN.md, "Metrics"), vectorised over column arrays.

Definitions, per request:

- TTFT = first token - arrival; TPOT = (finish - first token) / (output tokens - 1), undefined
  for one-token outputs; E2E = finish - arrival. Each is undefined (NaN in the arrays) where the
  request never reached that point.
- A request meets the SLO when it FINISHED, TTFT <= ``slo.ttft_s`` and, for outputs of two or
  more tokens, TPOT <= ``slo.tpot_s`` (one-token outputs count on TTFT alone).
- Attainment = met / all requests: rejected, aborted and unfinished requests are misses.
- Goodput = met / duration, where duration is the run's arrival span (last - first arrival,
  or the ``duration_s`` the caller passes). When that span is 0 (one request, or all at once)
  the makespan (last finish - first arrival) is used instead; with nothing finished, goodput is 0.
- Latency percentiles (``ttft_p90`` ...) are honest (``dopd.metrics.percentiles``): a request
  that never got its first token counts as infinitely late in TTFT and E2E, one that got it but
  did not finish in TPOT and E2E. A percentile that lands on such a request is a miss:
  ``math.inf`` here, ``null`` in JSON, ``miss`` in tables. ``*_unreached_share`` is the share of
  each metric's population counted infinite; ``rejected_share`` the share of requests rejected.
- Served-only percentiles (``ttft_p90_served`` ...) and the means (``mean_ttft`` ...) are over
  the requests for which the value is defined, whatever their final state, with
  ``numpy.percentile``'s linear interpolation; None when no request has the value.
- None of the latency figures enters attainment or goodput.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dopd.errors import DopdError, require
from dopd.metrics.percentiles import (
    honest_latencies,
    honest_percentiles,
    served_percentiles,
    unreached_share,
)
from dopd.types import SLO, RequestOutcome, RequestState

PERCENTILES = (50, 90, 99)
_TOLERANCE_S = 1e-9


@dataclass(frozen=True, slots=True)
class MetricsSummary:
    """Request counts, SLO attainment, goodput and latency statistics of one run (seconds).

    ``met`` counts requests meeting the SLO; ``unfinished`` those neither finished, rejected
    nor aborted when the run ended. ``{ttft,tpot,e2e}_{p50,p90,p99}`` are honest percentiles
    (``math.inf`` = a miss), ``*_served`` and ``mean_*`` are over the requests that have the
    value (see the module doc). Latency fields are None when no request is in the population.
    """

    requests: int
    finished: int
    rejected: int
    aborted: int
    unfinished: int
    met: int
    attainment: float
    goodput_rps: float
    duration_s: float
    ttft_slo_s: float
    tpot_slo_s: float
    rejected_share: float
    ttft_unreached_share: float
    tpot_unreached_share: float
    e2e_unreached_share: float
    ttft_p50: float | None
    ttft_p90: float | None
    ttft_p99: float | None
    tpot_p50: float | None
    tpot_p90: float | None
    tpot_p99: float | None
    e2e_p50: float | None
    e2e_p90: float | None
    e2e_p99: float | None
    ttft_p50_served: float | None
    ttft_p90_served: float | None
    ttft_p99_served: float | None
    tpot_p50_served: float | None
    tpot_p90_served: float | None
    tpot_p99_served: float | None
    e2e_p50_served: float | None
    e2e_p90_served: float | None
    e2e_p99_served: float | None
    mean_ttft: float | None
    mean_tpot: float | None
    mean_e2e: float | None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (ints, floats and None); a miss stays ``math.inf`` (write it with
        ``dopd.bench.report.write_json``, which turns it into ``null``)."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RequestLatencies:
    """Per-request TTFT, TPOT and E2E (NaN where undefined) and the SLO-met mask."""

    ttft_s: np.ndarray
    tpot_s: np.ndarray
    e2e_s: np.ndarray
    met: np.ndarray


def _column(values: Any, n: int | None, what: str, dtype: Any) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    require(array.ndim == 1, f"{what} must be a 1-d array")
    require(n is None or array.shape[0] == n, f"{what} has {array.shape[0]} entries, expected {n}")
    return array


def request_latencies(
    *,
    arrival_s: Any,
    first_token_s: Any,
    finish_s: Any,
    output_tokens: Any,
    state: Any,
    slo: SLO,
) -> RequestLatencies:
    """Per-request latencies and SLO verdicts from column arrays (NaN = never reached).

    Raises :class:`DopdError` on arrays of unequal length, an unknown state, an output length
    < 1, a FINISHED request without first-token or finish time, or times out of order.
    """
    arrival = _column(arrival_s, None, "arrival_s", np.float64)
    n = arrival.shape[0]
    first = _column(first_token_s, n, "first_token_s", np.float64)
    finish = _column(finish_s, n, "finish_s", np.float64)
    output = _column(output_tokens, n, "output_tokens", np.int64)
    states = _column(state, n, "state", np.int64)
    require(bool(np.all(np.isfinite(arrival))), "arrival_s must be finite")
    require(n == 0 or int(output.min()) >= 1, "output_tokens must be >= 1")
    known = np.isin(states, [int(s) for s in RequestState])
    require(bool(known.all()), f"unknown request state {states[~known][:1].tolist()}")
    finished = states == RequestState.FINISHED
    complete = np.isfinite(first) & np.isfinite(finish)
    if not bool(np.all(complete[finished])):
        index = int(np.flatnonzero(finished & ~complete)[0])
        raise DopdError(f"request at index {index} is FINISHED without first-token/finish times")
    order_ok = ~(first < arrival - _TOLERANCE_S) & ~(finish < first - _TOLERANCE_S)
    order_ok &= ~(finish < arrival - _TOLERANCE_S)
    if not bool(order_ok.all()):
        index = int(np.flatnonzero(~order_ok)[0])
        raise DopdError(f"request at index {index} has times out of order (arrival, first, finish)")

    ttft = first - arrival
    e2e = finish - arrival
    multi = output > 1
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(multi, (finish - first) / np.maximum(output - 1, 1), np.nan)
    tpot_ok = ~multi | (tpot <= slo.tpot_s)
    met = finished & (ttft <= slo.ttft_s) & tpot_ok
    return RequestLatencies(ttft, tpot, e2e, met)


def _mean(values: np.ndarray) -> float | None:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else None


def goodput_duration(arrival_s: np.ndarray, finish_s: np.ndarray) -> float:
    """Goodput denominator: the arrival span, or the makespan when the span is 0 (else 0)."""
    span = float(arrival_s.max() - arrival_s.min())
    if span > 0:
        return span
    finished = finish_s[np.isfinite(finish_s)]
    return float(finished.max() - arrival_s.min()) if finished.size else 0.0


def summarize_arrays(
    *,
    arrival_s: Any,
    first_token_s: Any,
    finish_s: Any,
    output_tokens: Any,
    state: Any,
    slo: SLO,
    duration_s: float | None = None,
) -> MetricsSummary:
    """Summary of a run given as column arrays (one entry per request, NaN = never reached).

    ``duration_s`` is the goodput denominator; None derives it with :func:`goodput_duration`.
    Raises :class:`DopdError` for an empty run, a negative or non-finite ``duration_s``, or
    inconsistent arrays (see :func:`request_latencies`).
    """
    lat = request_latencies(
        arrival_s=arrival_s, first_token_s=first_token_s, finish_s=finish_s,
        output_tokens=output_tokens, state=state, slo=slo,
    )
    arrival = np.asarray(arrival_s, dtype=np.float64)
    n = arrival.shape[0]
    require(n >= 1, "cannot summarize a run without requests")
    finish = np.asarray(finish_s, dtype=np.float64)
    if duration_s is None or duration_s == 0:
        duration = goodput_duration(arrival, finish)
    else:
        require(
            math.isfinite(duration_s) and duration_s > 0,
            f"run duration must be >= 0 s, got {duration_s}",
        )
        duration = float(duration_s)
    states = np.asarray(state, dtype=np.int64)
    counts = {s: int(np.count_nonzero(states == s)) for s in RequestState}
    met = int(lat.met.sum())
    if duration > 0:
        goodput = met / duration
    else:
        require(met == 0, "cannot compute goodput: the run has zero duration")
        goodput = 0.0
    honest = honest_latencies(lat.ttft_s, lat.tpot_s, lat.e2e_s,
                              np.asarray(first_token_s, dtype=np.float64),
                              np.asarray(output_tokens, dtype=np.int64), states)
    ttft_p = honest_percentiles(honest.ttft_s, PERCENTILES)
    tpot_p = honest_percentiles(honest.tpot_s, PERCENTILES)
    e2e_p = honest_percentiles(honest.e2e_s, PERCENTILES)
    ttft_sv = served_percentiles(lat.ttft_s, PERCENTILES)
    tpot_sv = served_percentiles(lat.tpot_s, PERCENTILES)
    e2e_sv = served_percentiles(lat.e2e_s, PERCENTILES)
    finished = counts[RequestState.FINISHED]
    rejected = counts[RequestState.REJECTED]
    aborted = counts[RequestState.ABORTED]
    return MetricsSummary(
        requests=n,
        finished=finished,
        rejected=rejected,
        aborted=aborted,
        unfinished=n - finished - rejected - aborted,
        met=met,
        attainment=met / n,
        goodput_rps=goodput,
        duration_s=duration,
        ttft_slo_s=slo.ttft_s,
        tpot_slo_s=slo.tpot_s,
        rejected_share=rejected / n,
        ttft_unreached_share=unreached_share(honest.ttft_s),
        tpot_unreached_share=unreached_share(honest.tpot_s),
        e2e_unreached_share=unreached_share(honest.e2e_s),
        ttft_p50=ttft_p[0], ttft_p90=ttft_p[1], ttft_p99=ttft_p[2],
        tpot_p50=tpot_p[0], tpot_p90=tpot_p[1], tpot_p99=tpot_p[2],
        e2e_p50=e2e_p[0], e2e_p90=e2e_p[1], e2e_p99=e2e_p[2],
        ttft_p50_served=ttft_sv[0], ttft_p90_served=ttft_sv[1], ttft_p99_served=ttft_sv[2],
        tpot_p50_served=tpot_sv[0], tpot_p90_served=tpot_sv[1], tpot_p99_served=tpot_sv[2],
        e2e_p50_served=e2e_sv[0], e2e_p90_served=e2e_sv[1], e2e_p99_served=e2e_sv[2],
        mean_ttft=_mean(lat.ttft_s),
        mean_tpot=_mean(lat.tpot_s),
        mean_e2e=_mean(lat.e2e_s),
    )


def summarize(
    outcomes: Sequence[RequestOutcome], slo: SLO, duration_s: float | None = None
) -> MetricsSummary:
    """Summary of a run given as :class:`RequestOutcome` records (see :func:`summarize_arrays`)."""
    require(len(outcomes) >= 1, "cannot summarize a run without requests")
    nan = math.nan
    return summarize_arrays(
        arrival_s=[o.arrival_s for o in outcomes],
        first_token_s=[nan if o.first_token_s is None else o.first_token_s for o in outcomes],
        finish_s=[nan if o.finish_s is None else o.finish_s for o in outcomes],
        output_tokens=[o.output_tokens for o in outcomes],
        state=[int(o.state) for o in outcomes],
        slo=slo,
        duration_s=duration_s,
    )


def summarize_result(result: Any, slo: SLO, duration_s: float | None = None) -> MetricsSummary:
    """Summary of any object with the column attributes of ``dopd.sim.api.SimResult``."""
    return summarize_arrays(
        arrival_s=result.arrival_s, first_token_s=result.first_token_s, finish_s=result.finish_s,
        output_tokens=result.output_tokens, state=result.state, slo=slo, duration_s=duration_s,
    )
