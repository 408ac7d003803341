"""Joint predictions of (prefill count, decode count) splits.

Each side is predicted once per (instance count, rate level) row:

- prefill: a mixture of *entries* (:mod:`.backlog`): the stationary model at a level, shifted
  by the fluid backlog of the trace's bursts (none for a stationary load), weighted by the
  requests they cover; P(TTFT ok) of a count is its entries' weighted CDF at the SLO;
- decode: the rate levels of the load, weighted by their requests.

A split (kp, kd) then has attainment ``P(TTFT ok | kp) * P(TPOT ok | kd) * F(kp, kd)``, where
``F`` is the probability that waiting for a decode slot or KV memory fits in what the TTFT SLO
leaves after the prefill side's mean TTFT: in dopd's engines the first token arrives with the
KV, so that wait delays it. The sides are otherwise taken as independent. Percentiles of the
mixtures are found by geometric bisection on their CDFs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dopd.control.ratio.backlog import (
    FLUID_UTILISATION,
    Entries,
    backlog_entries,
    full_batch_share,
    mean_backlog,
    stationary_entries,
    window_work,
)
from dopd.control.ratio.decode import DecodePrediction, predict_decode
from dopd.control.ratio.instance import InstanceModel
from dopd.control.ratio.prefill import PrefillPrediction, predict_prefill
from dopd.control.ratio.stats import WorkloadStats
from dopd.types import SLO

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_BISECT_ROUNDS = 14
_SPAN = 1e-4  # bisection bracket [hi * _SPAN, hi]


@dataclass(frozen=True, eq=False)
class SideTables:
    """Predictions of both sides for instance counts ``lo..hi`` (see the module docstring).

    ``demand_p`` / ``demand_d`` are request-weighted demand over capacity per count (>= 1:
    overloaded on average).
    """

    pre: PrefillPrediction
    dec: DecodePrediction
    entries: Entries
    lo: int
    d_weights: FloatArray
    ttft_slo: float
    ttft_scale: float
    tpot_scale: float
    couple_admission: bool
    prefill_attainment: FloatArray
    prefill_ttft_mean: FloatArray
    demand_p: FloatArray
    demand_d: FloatArray

    def index(self, counts: npt.ArrayLike) -> IntArray:
        return np.asarray(counts, dtype=np.int64) - self.lo

    def d_rows(self, counts: npt.ArrayLike) -> IntArray:
        """(len(counts), levels) decode row indices."""
        r = self.d_weights.size
        return self.index(counts)[:, None] * r + np.arange(r)[None, :]


def side_tables(inst: InstanceModel, stats: WorkloadStats, slo: SLO, lo: int, hi: int,
                rate: float, ttft_scale: float = 1.0, tpot_scale: float = 1.0) -> SideTables:
    """Predict counts ``lo..hi`` of both sides at ``rate`` (times the load's levels)."""
    counts = np.arange(lo, hi + 1, dtype=np.int64)
    kf = counts.astype(np.float64)
    _, p = stats.isl.arrays()
    capacity = kf / float(full_batch_share(inst, stats) @ p)
    series = stats.series
    if series is not None:
        p_levels, p_weights = series.levels * rate, series.weights
    else:
        p_levels = np.asarray(stats.rate_levels, dtype=np.float64) * rate
        p_weights = np.asarray(stats.rate_weights, dtype=np.float64)
    lam = np.tile(p_levels, counts.size)
    k_rows = np.repeat(counts, p_levels.size)
    if series is not None:
        lam = np.minimum(lam, FLUID_UTILISATION * np.repeat(capacity, p_levels.size))
    pre = predict_prefill(inst, stats, k_rows, lam, slo.ttft_s, ttft_scale)
    if series is not None:
        width = series.window_requests / rate
        delay = mean_backlog(window_work(inst, stats, series), kf, width) * ttft_scale
        entries = backlog_entries(delay, series)
    else:
        entries = stationary_entries(counts.size, p_weights)
    att = _entry_cdf(pre, entries, np.full(entries.row.size, slo.ttft_s))
    prefill_att = np.bincount(entries.count_index, weights=att * entries.weight,
                              minlength=counts.size)
    mean = pre.ttft_mean[entries.row] + entries.delay
    with np.errstate(invalid="ignore"):
        ttft_mean = np.bincount(entries.count_index, weights=mean * entries.weight,
                                minlength=counts.size)

    d_levels = np.asarray(stats.rate_levels, dtype=np.float64) * rate
    d_weights = np.asarray(stats.rate_weights, dtype=np.float64)
    dec = predict_decode(inst, stats, np.repeat(counts, d_levels.size),
                         np.tile(d_levels, counts.size), slo.tpot_s, tpot_scale)
    demand_p = float(p_levels @ p_weights) / capacity
    demand_d = (dec.rate / dec.capacity).reshape(counts.size, -1) @ d_weights
    return SideTables(pre, dec, entries, lo, d_weights, slo.ttft_s, ttft_scale, tpot_scale,
                      inst.first_token_after_transfer, prefill_att, ttft_mean, demand_p,
                      demand_d)


def _entry_cdf(pre: PrefillPrediction, entries: Entries, t: FloatArray,
               select: IntArray | None = None) -> FloatArray:
    """CDF of each (selected) entry at ``t`` (one threshold per selected entry)."""
    rows = entries.row if select is None else entries.row[select]
    delay = entries.delay if select is None else entries.delay[select]
    return pre.cdf(t - delay, rows)


def _admission_ok(tab: SideTables, ip: IntArray, t: FloatArray, rd: IntArray) -> FloatArray:
    """(P,) level-averaged P(admission wait fits in t - mean prefill TTFT)."""
    if not tab.couple_admission:
        return np.ones(ip.size)
    adm = tab.dec.admission
    pw, cm = adm.p_wait[rd], adm.cond_mean[rd] * tab.ttft_scale
    mean = tab.prefill_ttft_mean[ip]
    slack = np.maximum(t - np.where(np.isfinite(mean), mean, 0.0), 0.0)[:, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        tail = pw * np.exp(-slack / cm)
    tail = np.where(np.isinf(cm), 1.0, np.where(pw <= 0, 0.0, tail))
    return (1.0 - tail) @ tab.d_weights


@dataclass(frozen=True, slots=True)
class PairScores:
    """Predictions of each (n_prefill[i], n_decode[i]) pair."""

    ttft_attainment: FloatArray
    tpot_attainment: FloatArray
    attainment: FloatArray
    prefill_utilisation: FloatArray
    decode_utilisation: FloatArray
    decode_batch: FloatArray


def score_pairs(tab: SideTables, n_prefill: npt.ArrayLike, n_decode: npt.ArrayLike) -> PairScores:
    """Attainment of each pair (see the module docstring)."""
    ip, rd = tab.index(n_prefill), tab.d_rows(n_decode)
    w = tab.d_weights
    adm = _admission_ok(tab, ip, np.full(ip.size, tab.ttft_slo), rd)
    ttft = tab.prefill_attainment[ip] * adm
    tpot = tab.dec.attainment[rd] @ w
    return PairScores(
        ttft_attainment=ttft, tpot_attainment=tpot, attainment=ttft * tpot,
        prefill_utilisation=tab.demand_p[ip], decode_utilisation=tab.demand_d[tab.index(n_decode)],
        decode_batch=tab.dec.batch[rd] @ w,
    )


def _bisect(cdf: object, hi: FloatArray, q: float) -> FloatArray:
    """Smallest t (to bisection precision) with cdf(t) >= q, per entry; inf where hi is inf."""
    finite = np.isfinite(hi)
    top = np.where(finite, hi, 1.0)
    log_lo, log_hi = np.log(top * _SPAN), np.log(top)
    for _ in range(_BISECT_ROUNDS):
        mid = 0.5 * (log_lo + log_hi)
        ok = cdf(np.exp(mid)) >= q  # type: ignore[operator]
        log_hi = np.where(ok, mid, log_hi)
        log_lo = np.where(ok, log_lo, mid)
    reached = cdf(np.exp(log_hi)) >= q - 1e-9  # type: ignore[operator]
    return np.where(finite & reached, np.exp(log_hi), np.inf)


def pair_quantiles(tab: SideTables, n_prefill: npt.ArrayLike, n_decode: npt.ArrayLike,
                   q: float) -> tuple[FloatArray, FloatArray]:
    """(TTFT, TPOT) at quantile ``q`` of each pair (inf when unreachable); the TPOT percentile
    is over the requests that decode."""
    ip, rd = tab.index(n_prefill), tab.d_rows(n_decode)
    w = tab.d_weights
    n_pairs = ip.size
    # The entries of each pair's prefill count (entries are sorted by count), and their pair.
    ci = tab.entries.count_index
    starts = np.searchsorted(ci, ip, side="left")
    sizes = np.searchsorted(ci, ip, side="right") - starts
    owner = np.repeat(np.arange(n_pairs), sizes)
    sel = np.repeat(starts - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes) \
        + np.arange(int(sizes.sum()))
    ew = tab.entries.weight[sel]

    def ttft_cdf(t: FloatArray) -> FloatArray:
        per = _entry_cdf(tab.pre, tab.entries, t[owner], sel)
        mix = np.bincount(owner, weights=per * ew, minlength=n_pairs)
        return mix * _admission_ok(tab, ip, t, rd)

    def tpot_cdf(t: FloatArray) -> FloatArray:
        levels = w.size
        per = tab.dec.cdf(np.repeat(t, levels), rd.ravel()).reshape(n_pairs, levels)
        return per @ w

    stable_p = tab.pre.stable[tab.entries.row[sel]]
    up_p = tab.pre.upper_bound(0.9999, tab.entries.row[sel]) + tab.entries.delay[sel]
    top_p = np.zeros(n_pairs)
    np.maximum.at(top_p, owner, np.where(stable_p, up_p, 0.0))
    mass_p = np.bincount(owner, weights=stable_p * ew, minlength=n_pairs)
    if tab.couple_admission:
        extra = tab.dec.admission.quantile(0.9999)[rd] * tab.ttft_scale
        top_p = top_p + np.where(np.isfinite(extra), extra, 0.0).max(axis=1)
    hi_p = np.where(mass_p >= q, top_p, np.inf)
    stable_d = tab.dec.stable[rd]
    up_d = tab.dec.upper_bound(0.9999, rd.ravel()).reshape(rd.shape)
    hi_d = np.where((stable_d * w).sum(axis=1) >= q,
                    np.where(stable_d, up_d, 0.0).max(axis=1), np.inf)
    return _bisect(ttft_cdf, hi_p, q), _bisect(tpot_cdf, hi_d, q)
