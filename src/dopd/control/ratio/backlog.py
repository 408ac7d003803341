"""Fluid backlog of the prefill side through a trace's bursts.

When a burst brings more prefill work than ``k`` instances can do, the excess waits and is
served after the burst: a queue that a stationary model at any one rate cannot show. Over the
fine window series of :mod:`.arrivals`, the work arriving in window ``w`` (seconds of one
instance at full batches, from a quadratic fit of the per-prompt cost over the prompt-length
distribution applied to the window's length sums) is ``X_w``; the backlog in seconds obeys
Lindley's recursion ``B_{w+1} = max(0, B_w + X_w / k - width)``, evaluated for every ``k`` at
once in closed form (``B_w = S_w - min_{j <= w} S_j`` with ``S`` the partial sums). Requests of a
window see the time-average of the backlog over it.

Each window's cost per request is shrunk towards the overall mean by the share of its spread
that is sampling noise of random prompt lengths (the stationary model's service variance covers
that), so real shifts of the length mix stay; the window counts keep their Poisson noise, which
is real variation of the arrivals at that scale. The stationary queue model runs on top at each
window's rate level, capped at ``FLUID_UTILISATION`` of capacity: the fluid part carries the
excess, and the cap keeps the two from counting the same slow fluctuations twice near
saturation. Checked against the simulator on Poisson, Azure conversation, Azure code and
Mooncake workloads (see the tests and ``benchmarks/bench_ratio_solver.py``). The result is a
list of weighted *entries* (count, stationary row, backlog delay) that :mod:`.evaluate` mixes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dopd.control.ratio.arrivals import ArrivalSeries
from dopd.control.ratio.instance import InstanceModel
from dopd.control.ratio.stats import WorkloadStats

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

FLUID_UTILISATION = 0.9
"""Utilisation at which the stationary model of an overloaded window is evaluated."""

_BUCKETS_PER_OCTAVE = 4


def full_batch_share(inst: InstanceModel, stats: WorkloadStats) -> FloatArray:
    """Per-prompt cost (s) on the input-length support when steps are full (batched)."""
    v, _ = stats.isl.arrays()
    _, fixed, var = inst.prefill_tables(v)
    return var + fixed / inst.batch_limit(v)


def window_work(inst: InstanceModel, stats: WorkloadStats, series: ArrivalSeries) -> FloatArray:
    """Seconds of one instance's full-batch work arriving in each window."""
    v, p = stats.isl.arrays()
    share = full_batch_share(inst, stats)
    if v.size >= 3 and float(v.max() - v.min()) > 0:
        coef = np.polyfit(v, share, 2, w=np.sqrt(p))
        c2, c1, c0 = (float(x) for x in coef)
    else:
        c2, c1, c0 = 0.0, 0.0, float(share @ p)
        if v[0] > 0:
            c1, c0 = c0 / float(v[0]), 0.0
    work = c0 * series.counts + c1 * series.sum_n + c2 * series.sum_n2
    # The fit must not distort the total: rescale to the exact expected work per request.
    total = float(work.sum())
    exact = float(share @ p) * float(series.counts.sum())
    if total > 0:
        work = work * (exact / total)
    work = np.maximum(work, 0.0)
    # Shrink each window's mean cost per request towards the overall mean by how much of its
    # spread is sampling noise of random prompt lengths (which the stationary model's service
    # variance already covers); real shifts of the length mix survive.
    counts = series.counts
    busy = counts > 0
    mean = exact / float(counts.sum())
    per_req = np.where(busy, work / np.where(busy, counts, 1.0), mean)
    scv = max(float((share * share) @ p) / float(share @ p) ** 2 - 1.0, 0.0)
    spread = float((counts * (per_req - mean) ** 2).sum())
    noise = scv * mean * mean * float(busy.sum())
    keep = max(0.0, 1.0 - noise / spread) if spread > 0 else 0.0
    return counts * (mean + keep * (per_req - mean))


def mean_backlog(work: FloatArray, servers: npt.ArrayLike, width: float) -> FloatArray:
    """(K, W) time-averaged backlog delay in each window for each server count."""
    k = np.asarray(servers, dtype=np.float64)[:, None]
    x = work[None, :] / k - width
    s = np.concatenate([np.zeros((k.shape[0], 1)), np.cumsum(x, axis=1)], axis=1)
    start = s[:, :-1] - np.minimum(np.minimum.accumulate(s, axis=1)[:, :-1], 0.0)
    slope = x / width
    end = start + x
    drains = end < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        empty_at = np.where(drains, start / np.where(slope < 0, -slope, 1.0), width)
    mean_full = start + 0.5 * x
    mean_drain = 0.5 * start * empty_at / width
    return np.maximum(np.where(drains, mean_drain, mean_full), 0.0)


@dataclass(frozen=True, slots=True)
class Entries:
    """Weighted pieces of each count's TTFT mixture: entry ``e`` is stationary row ``row[e]``
    shifted by ``delay[e]`` seconds, carrying ``weight[e]`` of count ``count_index[e]``'s
    requests (weights of one count sum to 1)."""

    count_index: IntArray
    row: IntArray
    delay: FloatArray
    weight: FloatArray


def stationary_entries(n_counts: int, weights: FloatArray) -> Entries:
    """No backlog: one entry per (count, level), rows count-major."""
    r = weights.size
    idx = np.repeat(np.arange(n_counts), r)
    return Entries(idx, np.arange(n_counts * r), np.zeros(n_counts * r),
                   np.tile(weights, n_counts))


def backlog_entries(delay: FloatArray, series: ArrivalSeries) -> Entries:
    """Entries from (K, W) window delays: windows of one count with the same level and delay
    bucket (quarter octaves; zero delay is its own bucket) merge at their weighted delay."""
    n_counts, n_windows = delay.shape
    r = series.levels.size
    share = series.counts / series.counts.sum()
    with np.errstate(divide="ignore"):
        bucket = np.where(delay > 0, np.floor(np.log2(np.maximum(delay, 1e-12))
                                              * _BUCKETS_PER_OCTAVE) + 200, 0).astype(np.int64)
    bucket = np.clip(bucket, 0, 399)
    c_idx = np.repeat(np.arange(n_counts), n_windows)
    level = np.tile(series.level_of, n_counts)
    key = (c_idx * r + level) * 400 + bucket.ravel()
    w = np.tile(share, n_counts)
    uniq, inverse = np.unique(key, return_inverse=True)
    weight = np.bincount(inverse, weights=w, minlength=uniq.size)
    dsum = np.bincount(inverse, weights=w * delay.ravel(), minlength=uniq.size)
    keep = weight > 0
    uniq, weight, dsum = uniq[keep], weight[keep], dsum[keep]
    row = uniq // 400
    return Entries(row // r, row, dsum / weight, weight)
