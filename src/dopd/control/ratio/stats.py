"""The solver's view of the load: arrival rate and the input/output length distributions.

A :class:`LengthDist` is a small discrete distribution (support points and probabilities). Every
constructor preserves the first two moments exactly, which is what matters for a cost that is
quadratic in the length: samples and histogram bins are split into two points per bin at the
bin's conditional mean +- its conditional standard deviation; moments alone are spread as a
lognormal with that mean and CV, using its exact conditional moments on the same quantile bins
(about 22, denser in the tail, so a distribution has at most about 44 support points).

:class:`WorkloadStats` bundles the rate, its upper forecast bound, the burstiness of the arrivals
and the two length distributions; it is built from a :class:`~dopd.workload.Workload`, from
stated moments, from a monitor window or from a load forecast (:func:`as_stats` accepts any).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special

from dopd.control.ratio.arrivals import ArrivalSeries, arrival_series, burstiness, rate_levels
from dopd.errors import DopdError, require

FloatArray = npt.NDArray[np.float64]

MIN_RATE = 1e-6
"""Rate (req/s) used for a forecast of zero arrivals."""

#: Probability levels of the bin edges used for samples and lognormals: dense in the tail.
_LEVELS: FloatArray = np.unique(np.concatenate([
    np.linspace(0.0, 0.8, 9), np.linspace(0.8, 0.98, 10), [0.99, 0.995, 0.999, 1.0],
]))


def _phi(x: FloatArray) -> FloatArray:
    return 0.5 * special.erfc(-x / math.sqrt(2.0))


def _two_point(weight: FloatArray, mean: FloatArray, var: FloatArray) -> tuple[FloatArray, ...]:
    """Split each (weight, mean, var) bin into mean -+ sd with half the weight each."""
    sd = np.sqrt(np.maximum(var, 0.0))
    values = np.concatenate([mean - sd, mean + sd])
    probs = np.concatenate([weight, weight]) * 0.5
    return values, probs


@dataclass(frozen=True, slots=True)
class LengthDist:
    """A discrete distribution of token lengths: ascending ``values`` with ``probs`` summing to 1.

    Values are floats (a support point may sit between integers); all are >= 0.
    """

    values: tuple[float, ...]
    probs: tuple[float, ...]

    def __post_init__(self) -> None:
        require(len(self.values) == len(self.probs) and len(self.values) >= 1,
                "length distribution needs equal, non-empty values and probs")
        v = np.asarray(self.values, dtype=np.float64)
        p = np.asarray(self.probs, dtype=np.float64)
        require(bool(np.all(np.isfinite(v))) and bool(np.all(v >= 0)),
                "length values must be finite and >= 0")
        require(bool(np.all(p >= 0)) and abs(float(p.sum()) - 1.0) < 1e-6,
                "length probabilities must be >= 0 and sum to 1")
        require(bool(np.all(np.diff(v) >= 0)), "length values must be ascending")

    @staticmethod
    def _build(values: FloatArray, probs: FloatArray) -> LengthDist:
        keep = probs > 0
        values, probs = np.maximum(values[keep], 0.0), probs[keep]
        order = np.argsort(values, kind="stable")
        values, probs = values[order], probs[order] / probs.sum()
        # Merge equal support points so point masses stay single entries.
        uniq, inverse = np.unique(values, return_inverse=True)
        merged = np.bincount(inverse, weights=probs, minlength=uniq.size)
        return LengthDist(tuple(uniq.tolist()), tuple(merged.tolist()))

    @staticmethod
    def point(length: float) -> LengthDist:
        """All mass at ``length``."""
        require(math.isfinite(length) and length >= 0, f"length must be >= 0, got {length}")
        return LengthDist((float(length),), (1.0,))

    @staticmethod
    def from_samples(samples: npt.ArrayLike) -> LengthDist:
        """From observed lengths: quantile bins (dense in the tail), two points per bin."""
        x = np.sort(np.asarray(samples, dtype=np.float64).ravel())
        require(x.size >= 1, "length samples are empty")
        require(bool(np.all(np.isfinite(x))) and bool(x[0] >= 0), "lengths must be finite, >= 0")
        cuts = np.unique(np.round(_LEVELS * x.size).astype(np.int64))
        sums = np.concatenate([[0.0], np.cumsum(x)])
        sqs = np.concatenate([[0.0], np.cumsum(x * x)])
        lo, hi = cuts[:-1], cuts[1:]
        count = (hi - lo).astype(np.float64)
        mean = (sums[hi] - sums[lo]) / count
        var = (sqs[hi] - sqs[lo]) / count - mean * mean
        values, probs = _two_point(count / x.size, mean, var)
        return LengthDist._build(values, probs)

    @staticmethod
    def lognormal(mean: float, cv: float) -> LengthDist:
        """A lognormal with ``mean`` and coefficient of variation ``cv`` (0: a point mass)."""
        require(math.isfinite(mean) and mean > 0, f"length mean must be > 0, got {mean}")
        require(math.isfinite(cv) and cv >= 0, f"length CV must be >= 0, got {cv}")
        if cv == 0:
            return LengthDist.point(mean)
        sigma = math.sqrt(math.log1p(cv * cv))
        mu = math.log(mean) - sigma * sigma / 2
        z = np.concatenate([[-np.inf], special.ndtri(_LEVELS[1:-1]), [np.inf]])
        mass = np.diff(_phi(z))
        # Partial moments E[X^j; z_i < Z <= z_i+1] = exp(j mu + j^2 s^2 / 2) dPhi(z - j s).
        m1 = math.exp(mu + sigma**2 / 2) * np.diff(_phi(z - sigma)) / mass
        m2 = math.exp(2 * mu + 2 * sigma**2) * np.diff(_phi(z - 2 * sigma)) / mass
        values, probs = _two_point(mass, m1, m2 - m1 * m1)
        return LengthDist._build(values, probs)

    @staticmethod
    def from_moments(mean: float, m2: float) -> LengthDist:
        """Lognormal with mean ``mean`` and raw second moment ``m2`` (>= mean^2)."""
        require(math.isfinite(m2) and m2 >= 0, f"second moment must be >= 0, got {m2}")
        require(mean > 0 and m2 >= mean * mean * (1 - 1e-9),
                f"second moment {m2:g} is below mean^2 {mean * mean:g}")
        return LengthDist.lognormal(mean, math.sqrt(max(m2 / (mean * mean) - 1.0, 0.0)))

    @staticmethod
    def from_bins(
        upper_edges: npt.ArrayLike, counts: npt.ArrayLike, mean: float | None = None,
        m2: float | None = None,
    ) -> LengthDist:
        """From a histogram with right-closed bins (``edges[i-1], edges[i]]``, first from 0).

        Finite bins are spread log-uniformly between their edges; an open last bin (inf edge)
        gets its conditional mean from ``mean`` when given (else 1.5x its lower edge). When
        ``mean`` and ``m2`` are both given, the result is rescaled to match them exactly.
        """
        edges = np.asarray(upper_edges, dtype=np.float64)
        n = np.asarray(counts, dtype=np.float64)
        require(edges.shape == n.shape and edges.size >= 1, "histogram edges and counts differ")
        require(bool(np.all(n >= 0)) and float(n.sum()) > 0, "histogram has no counts")
        lower = np.concatenate([[1.0], edges[:-1]])
        lo, hi = np.maximum(lower, 1.0), edges.copy()
        finite = np.isfinite(hi) & (hi > lo)
        log_lo, log_hi = np.log(lo), np.log(np.where(finite, hi, lo * 2))
        span = np.where(finite, log_hi - log_lo, 1.0)
        # Moments of a log-uniform variable on [lo, hi].
        b_mean = np.where(finite, (np.where(finite, hi, lo) - lo) / span, lo)
        b_m2 = np.where(finite, (np.where(finite, hi, lo) ** 2 - lo**2) / (2 * span), lo**2)
        w = n / n.sum()
        open_bin = ~np.isfinite(hi) & (w > 0)
        if open_bin.any():
            i = int(np.flatnonzero(open_bin)[0])
            rest = float(np.sum(np.where(open_bin, 0.0, w * b_mean)))
            guess = 1.5 * lo[i]
            if mean is not None and (mean - rest) / w[i] > lo[i]:
                guess = (mean - rest) / w[i]
            b_mean[i], b_m2[i] = guess, guess * guess
        dist = LengthDist._build(*_two_point(w, b_mean, b_m2 - b_mean**2))
        if mean is not None and m2 is not None:
            dist = dist.matched(mean, m2)
        return dist

    def matched(self, mean: float, m2: float) -> LengthDist:
        """An affine transform of this distribution with exactly ``mean`` and ``m2``."""
        require(m2 >= mean * mean * (1 - 1e-9), "second moment below mean^2")
        v, p = self.arrays()
        sd_now, sd_want = math.sqrt(self.var), math.sqrt(max(m2 - mean * mean, 0.0))
        scale = sd_want / sd_now if sd_now > 0 else 0.0
        return LengthDist._build(mean + (v - self.mean) * scale, p.copy())

    def arrays(self) -> tuple[FloatArray, FloatArray]:
        """(values, probs) as float64 arrays."""
        return np.asarray(self.values, dtype=np.float64), np.asarray(self.probs, dtype=np.float64)

    @property
    def mean(self) -> float:
        v, p = self.arrays()
        return float(np.dot(v, p))

    @property
    def m2(self) -> float:
        """Raw second moment E[n^2]."""
        v, p = self.arrays()
        return float(np.dot(v * v, p))

    @property
    def var(self) -> float:
        return max(self.m2 - self.mean**2, 0.0)

    @property
    def cv(self) -> float:
        return math.sqrt(self.var) / self.mean if self.mean > 0 else 0.0

    def quantile(self, q: float) -> float:
        """Smallest support value whose cumulative probability reaches ``q``."""
        require(0.0 <= q <= 1.0, f"quantile level must be in [0, 1], got {q}")
        v, p = self.arrays()
        i = int(np.searchsorted(np.cumsum(p), q - 1e-12))
        return float(v[min(i, v.size - 1)])

    def collapsed(self) -> LengthDist:
        """All mass at the mean: the no-variance ablation (E[n]^2 in place of E[n^2])."""
        return LengthDist.point(self.mean)


@dataclass(frozen=True, slots=True)
class WorkloadStats:
    """Load as the solver sees it.

    ``rate`` (req/s, > 0) is the expected arrival rate; ``rate_upper`` (>= rate) its upper
    forecast bound, used to provision an elastic pool ahead of bursts (None: same as ``rate``).
    ``arrival_scv`` is the burstiness of the arrivals: their squared CV (1 for Poisson) for
    stated loads; for a trace (with a ``series``), the index of dispersion at the scale of a
    couple of requests, about E[X^2] / E[X] for clumps of X near-simultaneous arrivals.
    ``isl`` / ``osl`` are the prompt and output length distributions; ``cross_mean`` is
    E[ISL * OSL] (None: independent lengths), used for the decode context.

    ``rate_levels`` / ``rate_weights`` describe a load that varies over time: a share
    ``rate_weights[j]`` of the requests arrives while the rate is ``rate * rate_levels[j]``
    (each level is treated as stationary; the solver averages attainment over them). The
    default single level 1.0 is a stationary load. ``series`` (from a trace) is the fine
    window series the prefill side runs its backlog through (see :mod:`.arrivals`).
    """

    rate: float
    isl: LengthDist
    osl: LengthDist
    rate_upper: float | None = None
    arrival_scv: float = 1.0
    cross_mean: float | None = None
    rate_levels: tuple[float, ...] = (1.0,)
    rate_weights: tuple[float, ...] = (1.0,)
    series: ArrivalSeries | None = None

    def __post_init__(self) -> None:
        require(math.isfinite(self.rate) and self.rate > 0, f"rate must be > 0, got {self.rate}")
        require(len(self.rate_levels) == len(self.rate_weights) and len(self.rate_levels) >= 1,
                "rate levels and weights must be equal, non-empty")
        require(all(math.isfinite(x) and x > 0 for x in self.rate_levels),
                "rate levels must be finite and > 0")
        require(all(w >= 0 for w in self.rate_weights)
                and abs(sum(self.rate_weights) - 1.0) < 1e-6, "rate weights must sum to 1")
        require(self.rate_upper is None or self.rate_upper >= self.rate,
                f"rate upper bound {self.rate_upper} is below the rate {self.rate}")
        require(math.isfinite(self.arrival_scv) and self.arrival_scv >= 0,
                f"arrival squared CV must be >= 0, got {self.arrival_scv}")
        require(self.isl.mean >= 1, f"mean input length must be >= 1, got {self.isl.mean:g}")
        require(self.osl.mean >= 1, f"mean output length must be >= 1, got {self.osl.mean:g}")

    @property
    def peak_rate(self) -> float:
        """``rate_upper`` if known, else ``rate``."""
        return self.rate if self.rate_upper is None else self.rate_upper

    @property
    def isl_osl_mean(self) -> float:
        """E[ISL * OSL]."""
        return self.isl.mean * self.osl.mean if self.cross_mean is None else self.cross_mean

    def with_rate(self, rate: float, rate_upper: float | None = None) -> WorkloadStats:
        """The same length mix at another rate."""
        return replace(self, rate=rate, rate_upper=rate_upper)

    def without_variance(self) -> WorkloadStats:
        """Input lengths collapsed to their mean (the solver's ``variance_term=False``)."""
        mean = self.isl.mean
        series = None if self.series is None else self.series.with_lengths(mean, mean * mean)
        return replace(self, isl=self.isl.collapsed(), cross_mean=None, series=series)

    @classmethod
    def from_workload(cls, workload: Any, rate_scale: float = 1.0) -> WorkloadStats:
        """From a Workload (``arrival_s``, ``prompt_tokens``, ``output_tokens`` arrays).

        The rate is (n - 1) / span times ``rate_scale``; the time variation of the arrivals
        (rate levels, the fine window series, burstiness) comes from :mod:`.arrivals`.
        """
        require(math.isfinite(rate_scale) and rate_scale > 0,
                f"rate scale must be > 0, got {rate_scale}")
        t = np.asarray(workload.arrival_s, dtype=np.float64)
        require(t.size >= 2, "a workload needs at least two requests for a rate")
        span = float(t[-1] - t[0])
        require(span > 0, "workload arrivals span no time")
        p = np.asarray(workload.prompt_tokens, dtype=np.float64)
        o = np.asarray(workload.output_tokens, dtype=np.float64)
        levels, weights = rate_levels(t)
        return cls(
            rate=(t.size - 1) / span * rate_scale,
            isl=LengthDist.from_samples(p),
            osl=LengthDist.from_samples(o),
            arrival_scv=burstiness(t),
            cross_mean=float(np.mean(p * o)),
            rate_levels=levels,
            rate_weights=weights,
            series=arrival_series(t, p) if t.size >= 40 else None,
        )

    def stationary(self) -> WorkloadStats:
        """The same load with its time variation dropped (one rate level, no series)."""
        return replace(self, rate_levels=(1.0,), rate_weights=(1.0,), series=None)

    @classmethod
    def from_moments(
        cls, rate: float, isl_mean: float, isl_cv: float, osl_mean: float, osl_cv: float,
        rate_upper: float | None = None, arrival_scv: float = 1.0,
    ) -> WorkloadStats:
        """Stated moments; both lengths are spread as lognormals (independent)."""
        return cls(rate, LengthDist.lognormal(isl_mean, isl_cv),
                   LengthDist.lognormal(osl_mean, osl_cv), rate_upper, arrival_scv)

    @classmethod
    def from_forecast(cls, forecast: Any, arrival_scv: float = 1.0) -> WorkloadStats:
        """From a LoadForecast-like object: ``rate, rate_upper, mean_in, m2_in, mean_out,
        m2_out``. A forecast of no arrivals is planned as a trickle (``MIN_RATE``)."""
        try:
            rate = max(float(forecast.rate), MIN_RATE)
            upper = float(forecast.rate_upper)
            isl = LengthDist.from_moments(float(forecast.mean_in), float(forecast.m2_in))
            osl = LengthDist.from_moments(float(forecast.mean_out), float(forecast.m2_out))
        except AttributeError as exc:
            raise DopdError(f"not a load forecast: {exc}") from None
        return cls(rate, isl, osl, max(upper, rate), arrival_scv)

    @classmethod
    def from_window(cls, window: Any, arrival_scv: float = 1.0) -> WorkloadStats:
        """From a monitor WindowStats: its input histogram (matched to the window's moments)
        and output moments."""
        isl = LengthDist.from_bins(window.in_hist_edges, window.in_hist, window.mean_in,
                                   window.m2_in)
        osl = LengthDist.from_moments(float(window.mean_out), float(window.m2_out))
        return cls(float(window.rate_rps), isl, osl, None, arrival_scv)


def as_stats(load: Any) -> WorkloadStats:
    """Accept a WorkloadStats, a LoadForecast-like, a WindowStats-like or a Workload."""
    if isinstance(load, WorkloadStats):
        return load
    if hasattr(load, "rate_upper") and hasattr(load, "m2_in"):
        return WorkloadStats.from_forecast(load)
    if hasattr(load, "in_hist_edges"):
        return WorkloadStats.from_window(load)
    if hasattr(load, "arrival_s") and hasattr(load, "prompt_tokens"):
        return WorkloadStats.from_workload(load)
    raise DopdError(f"cannot read load statistics from a {type(load).__name__}")
