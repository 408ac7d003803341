"""How a trace's arrivals vary over time, in the form the solver's queue models use.

A stationary queue model sees only a mean rate. A real trace is bursty on every scale: the
Azure code trace idles for minutes, then delivers 50 requests per second for three seconds. Two
views of that variation are extracted here, both relative to the trace's mean rate (so they stay
valid when the trace is time-scaled):

- coarse rate levels (:func:`rate_levels`): windows of about 100 requests grouped into a few
  levels weighted by their requests; each level is treated as stationary. Used by the decode
  side, whose running batch integrates arrivals over a request's whole decode;
- a fine window series (:class:`ArrivalSeries`): windows of about 10 requests, each with its
  request count and prompt-length sums, plus a level per window. The prefill side runs a fluid
  backlog through the series (work arriving in a burst beyond capacity is served later) and a
  stationary queue at each window's level on top.

Window counts carry Poisson noise (relative variance 1 / mean count); it is removed from the
levels by shrinking them towards 1, so a stationary Poisson stream keeps one flat level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dopd.errors import require

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _ro(a: npt.ArrayLike, dtype: type) -> npt.NDArray:
    out = np.array(a, dtype=dtype)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class ArrivalSeries:
    """Consecutive equal windows of a trace (read-only arrays of one entry per window).

    ``counts``, ``sum_n`` and ``sum_n2`` are the requests and the sums of their prompt lengths
    and squared prompt lengths; ``level_of[w]`` indexes ``levels`` (relative rates, Poisson
    noise removed) whose ``weights`` are their shares of the requests. A window lasts
    ``window_requests / rate`` seconds at the load's rate.
    """

    counts: FloatArray
    sum_n: FloatArray
    sum_n2: FloatArray
    level_of: IntArray
    levels: FloatArray
    weights: FloatArray
    window_requests: float

    def __post_init__(self) -> None:
        w = len(self.counts)
        require(w >= 1 and len(self.sum_n) == w and len(self.sum_n2) == w
                and len(self.level_of) == w, "arrival series columns differ in length")
        require(len(self.levels) == len(self.weights) >= 1, "arrival series needs levels")
        require(self.window_requests > 0, "window_requests must be > 0")
        for name, dtype in (("counts", np.float64), ("sum_n", np.float64),
                            ("sum_n2", np.float64), ("level_of", np.int64),
                            ("levels", np.float64), ("weights", np.float64)):
            object.__setattr__(self, name, _ro(getattr(self, name), dtype))
        require(bool(np.all(self.counts >= 0)) and float(self.counts.sum()) > 0,
                "arrival series has no requests")
        require(int(self.level_of.min()) >= 0 and int(self.level_of.max()) < self.levels.size,
                "arrival series level index out of range")

    @property
    def size(self) -> int:
        return int(self.counts.size)

    def with_lengths(self, mean: float, m2: float) -> ArrivalSeries:
        """The same arrivals with every prompt-length sum replaced by ``mean`` / ``m2`` moments."""
        return ArrivalSeries(self.counts, self.counts * mean, self.counts * m2, self.level_of,
                             self.levels, self.weights, self.window_requests)


def _windows(t: FloatArray, per_window: int) -> tuple[IntArray, FloatArray, float]:
    """Window index of each arrival (times from 0), counts per window, window width."""
    windows = max(int(t.size // per_window), 1)
    width = float(t[-1]) / windows
    which = np.minimum((t / width).astype(np.int64), windows - 1)
    return which, np.bincount(which, minlength=windows).astype(np.float64), width


def _shrunk(counts: FloatArray) -> FloatArray:
    """Relative window rates with the Poisson sampling noise removed (0 for empty windows)."""
    mean = float(counts.mean())
    rel = counts / mean
    var_obs = float(rel.var())
    shrink = math.sqrt(max(var_obs - 1.0 / mean, 0.0) / var_obs) if var_obs > 0 else 0.0
    return np.where(counts > 0, np.maximum(1.0 + (rel - 1.0) * shrink, 1e-3), 0.0)


def _group(rel: FloatArray, counts: FloatArray, max_levels: int
           ) -> tuple[IntArray, FloatArray, FloatArray]:
    """Request-weighted quantile groups of window rates: (level of window, levels, weights)."""
    order = np.argsort(rel, kind="stable")
    cum = np.cumsum(counts[order]) / counts.sum()
    group_sorted = np.minimum((cum * max_levels - 1e-9).astype(np.int64), max_levels - 1)
    group_sorted = np.maximum(group_sorted, 0)
    used, dense = np.unique(group_sorted, return_inverse=True)
    level_of = np.empty_like(dense)
    level_of[order] = dense
    weights = np.bincount(level_of, weights=counts, minlength=used.size)
    busy = counts > 0
    levels = np.bincount(level_of[busy], weights=(rel * counts)[busy], minlength=used.size)
    levels = levels / np.maximum(weights, 1e-300)
    levels = np.where(weights > 0, levels, 1e-3)
    return level_of, np.maximum(levels, 1e-3), weights / weights.sum()


def rate_levels(t: npt.ArrayLike, window_requests: int = 100, max_levels: int = 8
                ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Coarse rate levels (relative to the mean rate) and their request shares."""
    times = np.asarray(t, dtype=np.float64)
    times = times - times[0]
    _, counts, _ = _windows(times, window_requests)
    if counts.size == 1:
        return (1.0,), (1.0,)
    _, levels, weights = _group(_shrunk(counts), counts, max_levels)
    return tuple(levels.tolist()), tuple(weights.tolist())


def arrival_series(t: npt.ArrayLike, prompt_tokens: npt.ArrayLike, window_requests: int = 10,
                   max_levels: int = 12) -> ArrivalSeries:
    """The fine window series of arrival times ``t`` with their prompt lengths."""
    times = np.asarray(t, dtype=np.float64)
    times = times - times[0]
    n = np.asarray(prompt_tokens, dtype=np.float64)
    which, counts, _ = _windows(times, window_requests)
    sum_n = np.bincount(which, weights=n, minlength=counts.size)
    sum_n2 = np.bincount(which, weights=n * n, minlength=counts.size)
    if counts.size == 1:
        level_of, levels, weights = np.zeros(1, np.int64), np.ones(1), np.ones(1)
    else:
        level_of, levels, weights = _group(_shrunk(counts), counts, max_levels)
    return ArrivalSeries(counts, sum_n, sum_n2, level_of, levels, weights,
                         float(times.size) / counts.size)


def burstiness(t: npt.ArrayLike, window_requests: int = 10, burst_requests: int = 2) -> float:
    """Index of dispersion of counts (variance / mean) in bins expected to hold
    ``burst_requests`` arrivals at each window's own rate: 1 for Poisson arrivals, about
    E[X^2] / E[X] for arrivals in clumps of X, which a queue feels as the arrivals' squared CV.
    """
    times = np.asarray(t, dtype=np.float64)
    times = times - times[0]
    if times.size < 2 * burst_requests or times[-1] <= 0:
        return 1.0
    which, counts, width = _windows(times, window_requests)
    sub = np.maximum(np.floor(counts / burst_requests), 1.0).astype(np.int64)
    pos = (times - which * width) / width
    sub_idx = np.minimum((pos * sub[which]).astype(np.int64), sub[which] - 1)
    offsets = np.concatenate([[0], np.cumsum(sub)])
    bins = np.bincount(offsets[which] + sub_idx, minlength=int(offsets[-1])).astype(np.float64)
    expect = np.repeat(counts / sub, sub)
    # Given its window's count, a Poisson stream's bins are multinomial: variance
    # expect * (1 - 1 / sub) rather than expect.
    poisson_var = expect * np.repeat(1.0 - 1.0 / sub, sub)
    use = np.repeat(counts >= 2 * burst_requests, sub)
    if not use.any() or poisson_var[use].sum() <= 0:
        return 1.0
    return float(((bins - expect) ** 2)[use].sum() / poisson_var[use].sum())
