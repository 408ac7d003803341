"""Honest latency percentiles: requests that never got there count as infinitely late.

Populations, per request (columns as in :func:`dopd.metrics.summary.request_latencies`):

- TTFT: every request. One that never got its first token (rejected, aborted before it, or
  still waiting when the run ended) counts as ``inf``.
- TPOT: the requests with two or more output tokens that got their first token. One of them
  that did not finish counts as ``inf``. A request that never got its first token is counted
  in TTFT and E2E, not here; one-token outputs have no TPOT.
- E2E: every request; any that did not finish counts as ``inf``.

Percentile rule: ``numpy.percentile``'s default linear interpolation over the population with
the infinite latencies sorted last. A percentile whose interpolation touches an infinite latency
is a *miss*, returned as ``math.inf``: with ``n`` members of which ``k`` are finite, the q-th
percentile is a miss exactly when ``ceil(q / 100 * (n - 1)) >= k``. So it is finite only when
both order statistics it interpolates between are finite, and then it equals numpy's figure
over the whole population; with no infinite member it equals ``numpy.percentile`` exactly, so
honest and served-only figures agree whenever every request was served. A miss is ``math.inf``
in memory, ``null`` in JSON and ``miss`` in tables. An empty population gives ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dopd.types import RequestState


@dataclass(frozen=True, slots=True)
class HonestLatencies:
    """Per-request TTFT, TPOT and E2E for honest percentiles: ``inf`` = counted infinitely late,
    NaN = not in that metric's population (see the module doc)."""

    ttft_s: np.ndarray
    tpot_s: np.ndarray
    e2e_s: np.ndarray


def honest_latencies(
    ttft_s: np.ndarray,
    tpot_s: np.ndarray,
    e2e_s: np.ndarray,
    first_token_s: np.ndarray,
    output_tokens: np.ndarray,
    state: np.ndarray,
) -> HonestLatencies:
    """The honest populations from per-request latencies (NaN = never reached) and columns.

    ``ttft_s``, ``tpot_s`` and ``e2e_s`` are as :func:`dopd.metrics.summary.request_latencies`
    computes them; all arrays have one entry per request.
    """
    started = np.isfinite(np.asarray(first_token_s, dtype=np.float64))
    finished = np.asarray(state, dtype=np.int64) == int(RequestState.FINISHED)
    multi = np.asarray(output_tokens, dtype=np.int64) > 1
    ttft = np.where(started, ttft_s, math.inf)
    tpot = np.where(multi & started, np.where(finished, tpot_s, math.inf), math.nan)
    e2e = np.where(finished, e2e_s, math.inf)
    return HonestLatencies(ttft, tpot, e2e)


def honest_percentiles(values: np.ndarray, qs: Sequence[float]) -> list[float | None]:
    """The ``qs``-th percentiles of a population (see the module doc for the rule).

    ``values``: NaN = not a member, ``inf`` = a member counted infinitely late. Returns, per
    q, a float, ``math.inf`` (a miss) or None (no member).
    """
    v = np.asarray(values, dtype=np.float64)
    members = v[~np.isnan(v)]
    n = members.size
    if n == 0:
        return [None] * len(qs)
    finite = np.sort(members[np.isfinite(members)])
    k = finite.size
    if k == 0:
        return [math.inf] * len(qs)
    # numpy's linear method: virtual index (n - 1) * q / 100, interpolated between its floor
    # and ceil. The infinite members, sorted last, are stood in for by the largest finite value
    # so numpy's own arithmetic gives every finite percentile; those that touch them are misses.
    quantiles = np.asarray(qs, dtype=np.float64) / 100.0
    upper = np.ceil((n - 1) * quantiles).astype(np.int64)
    filled = np.concatenate([finite, np.full(n - k, finite[-1])])
    values_at = np.percentile(filled, np.asarray(qs, dtype=np.float64))
    return [math.inf if u >= k else float(x) for u, x in zip(upper, values_at, strict=True)]


def unreached_share(values: np.ndarray) -> float:
    """Share of a population's members counted infinitely late (0.0 for an empty one)."""
    v = np.asarray(values, dtype=np.float64)
    members = v[~np.isnan(v)]
    return float(np.isinf(members).sum() / members.size) if members.size else 0.0


def served_percentiles(values: np.ndarray, qs: Sequence[float]) -> list[float | None]:
    """Percentiles (numpy linear) over the finite values only: the served-only figure that
    leaves out every request that never got there; None when no value is finite."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return [None] * len(qs)
    return [float(x) for x in np.percentile(finite, np.asarray(qs, dtype=np.float64))]
