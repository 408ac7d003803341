"""Decode side: the TPOT-feasible batch, decode throughput and predicted TPOT of ``k`` instances.

Model (see DESIGN.md "The P/D ratio solver"):

- A request with ``o`` output tokens decodes ``d = o - 1`` steps after its first token (one-token
  outputs never reach a decode instance and count on TTFT alone). Its context grows from its
  prompt length, so a running sequence's context, averaged over the time it spends in the
  batch, is ``(E[d n] + (E[d^2] + E[d]) / 2) / E[d]`` (length-biased: long outputs stay longer).
- Step time ``T(B) = alpha(B) + slope * B * ctx`` from the latency model. By Little's law the
  mean batch per instance solves ``B = r T(B)`` with ``r = lam E[d] / k`` decode steps demanded
  per second; the smallest root is the operating point, no root below the batch cap (max seqs
  or KV memory) means overload.
- A request's TPOT is ``T(B) + (join + transfer) / d``: the steps, plus the wait to join the
  running batch (uniform over a step) and, when the first token comes before the hand-off, the
  KV transfer, spread over its tokens. Batch-size and context fluctuations (Poisson batch,
  per-step variance averaged over the request's lifetime with the exponential autocorrelation
  of an M/G/inf population, amplified by the feedback of step time on residence) and the join
  wait give a normal spread around it (moment matched).
  When the batch cap binds, requests wait for a slot (Erlang C over all slots): before their
  first token in dopd's engines (the solver charges it to TTFT), else in their TPOT.
- ``max_batch_for_tpot`` is the brief's B*: the largest batch whose step time at the mean
  context meets the TPOT SLO and whose KV fits; ``B* / T(B*)`` is the per-instance throughput.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from dopd.control.ratio.instance import InstanceModel
from dopd.control.ratio.queueing import WaitDistribution, mgk_wait
from dopd.control.ratio.stats import WorkloadStats
from dopd.errors import require

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_BATCH_POINTS = 512


@dataclass(frozen=True, slots=True)
class DecodeShape:
    """Load-independent decode facts of a workload on an instance type."""

    steps_mean: float  # E[d], decode steps per request (one-token outputs count 0)
    ctx_mean: float  # time-weighted context of a running sequence
    ctx_var: float  # its variance
    batch_cap: float  # max sequences per instance (max_num_seqs and KV memory)
    decode_share: float  # share of requests that decode at all (o >= 2)


@dataclass(frozen=True, eq=False)
class DecodePrediction:
    """Per row (a decode count ``servers`` at arrival rate ``rate``), times already multiplied
    by the correction ``scale``.

    ``attainment`` = P(TPOT <= tpot_slo) over all requests (one-token outputs count as met; 0
    when overloaded); ``batch`` the mean running batch per instance, ``step_s`` the mean step
    time, ``utilisation`` the demanded share of the capacity at the batch cap, ``capacity``
    requests per second. ``admission`` is the wait for a free batch slot or KV memory before the
    hand-off, which delays the first token when the engine emits it with the KV (else it is in
    the TPOT). :meth:`cdf` gives P(TPOT <= t) per row over the requests that decode.
    """

    servers: IntArray
    rate: FloatArray
    attainment: FloatArray
    tpot_mean: FloatArray
    batch: FloatArray
    step_s: FloatArray
    utilisation: FloatArray
    capacity: FloatArray
    admission: WaitDistribution
    scale: float
    _pd: FloatArray = field(repr=False)
    _dd: FloatArray = field(repr=False)
    _base: FloatArray = field(repr=False)
    _sigma: FloatArray = field(repr=False)
    _adm_in_tpot: bool = False

    @property
    def stable(self) -> npt.NDArray[np.bool_]:
        return self.utilisation < 1.0

    def cdf(self, t: npt.ArrayLike, rows: IntArray | None = None) -> FloatArray:
        """P(TPOT <= t[i]) for row ``rows[i]`` among requests that decode."""
        idx = np.arange(self.servers.size) if rows is None else np.asarray(rows)
        h = np.asarray(t, dtype=np.float64)[:, None] / self.scale
        gap = h - self._base[idx]
        ok = _phi(gap / self._sigma[idx])
        if self._adm_in_tpot:
            adm = WaitDistribution(self.admission.p_wait[idx], self.admission.cond_mean[idx],
                                   self.admission.utilisation[idx])
            ok = ok * np.where(gap >= 0, 1.0 - adm.survival(np.maximum(gap, 0.0) * self._dd), 0.0)
        out = ok @ self._pd
        return np.where(self.stable[idx], np.minimum(out, 1.0), 0.0)

    def upper_bound(self, q: float, rows: IntArray | None = None) -> FloatArray:
        """A TPOT (scaled) that at least a share ``q`` of decoding requests stay under."""
        idx = np.arange(self.servers.size) if rows is None else np.asarray(rows)
        hi = self._base[idx].max(axis=1) + 8.0 * self._sigma[idx].max(axis=1)
        if self._adm_in_tpot:
            adm = WaitDistribution(self.admission.p_wait[idx], self.admission.cond_mean[idx],
                                   self.admission.utilisation[idx])
            hi = hi + adm.quantile(q) / self._dd.min()
        return np.where(self.stable[idx], hi * self.scale, np.inf)


def decode_shape(inst: InstanceModel, stats: WorkloadStats) -> DecodeShape:
    """Steps per request, mean/variance of a running sequence's context and the batch cap."""
    o, po = stats.osl.arrays()
    d = np.where(o - 1.0 >= 0.5, o - 1.0, 0.0)
    e_d = float(d @ po)
    require(e_d > 0, "no request decodes: every output is a single token")
    e_d2, e_d3 = float((d * d) @ po), float((d**3) @ po)
    n_mean = stats.isl.mean
    # E[d n] from E[o n] when the joint moment is known (d = o - 1 for decoding requests).
    e_dn = max(stats.isl_osl_mean - n_mean * float((o - d) @ po), 0.0) if stats.cross_mean \
        is not None else n_mean * e_d
    ctx = (e_dn + 0.5 * (e_d2 + e_d)) / e_d
    # Position j within a length-biased output is uniform on 1..d.
    j_mean, j_m2 = e_d2 / (2 * e_d), e_d3 / (3 * e_d)
    ctx_var = stats.isl.var + max(j_m2 - j_mean**2, 0.0)
    kv_cap = inst.kv_batch_limit(ctx + inst.block_size / 2)
    cap = float(min(inst.max_num_seqs, kv_cap))
    require(cap >= 1, f"a sequence of {ctx:.0f} tokens of context does not fit the KV memory")
    return DecodeShape(e_d, ctx, ctx_var, cap, float(po[d > 0].sum()))


def max_batch_for_tpot(inst: InstanceModel, shape: DecodeShape, tpot_slo: float) -> int:
    """B*: the largest batch (>= 0) with step time <= ``tpot_slo`` within the batch cap."""
    b = np.arange(1, int(shape.batch_cap) + 1, dtype=np.float64)
    ok = inst.decode_step(b, shape.ctx_mean) <= tpot_slo
    return int(b[ok].max()) if ok.any() else 0


def _phi(z: FloatArray) -> FloatArray:
    """Standard normal CDF by the logistic approximation of Bowling et al. (2009), absolute
    error < 1.5e-4, several times faster than erfc on the solver's hot path."""
    zc = np.clip(z, -8.0, 8.0)
    return 1.0 / (1.0 + np.exp(-(1.5976 * zc + 0.070566 * zc * zc * zc)))


def predict_decode(
    inst: InstanceModel,
    stats: WorkloadStats,
    servers: npt.ArrayLike,
    rate: npt.ArrayLike,
    tpot_slo: float,
    scale: float = 1.0,
) -> DecodePrediction:
    """Predict TPOT for each row: ``servers`` (ints >= 1) and ``rate`` (req/s > 0) broadcast.

    ``scale`` multiplies every predicted TPOT (the online correction factor).
    """
    k_in, lam_in = np.broadcast_arrays(np.atleast_1d(np.asarray(servers, dtype=np.int64)),
                                       np.atleast_1d(np.asarray(rate, dtype=np.float64)))
    require(bool(np.all(k_in >= 1)), "decode instance counts must be >= 1")
    require(bool(np.all(lam_in > 0)), "arrival rates must be > 0")
    require(tpot_slo > 0, f"TPOT SLO must be > 0, got {tpot_slo}")
    require(scale > 0, f"correction scale must be > 0, got {scale}")
    k = k_in.astype(np.int64)
    kf = k.astype(np.float64)
    lam = lam_in.astype(np.float64)
    shape = decode_shape(inst, stats)
    cap = shape.batch_cap
    rows = np.arange(kf.size)

    grid = np.linspace(0.0, cap, _BATCH_POINTS)
    t_grid = inst.decode_step(grid, shape.ctx_mean)
    r = lam * shape.steps_mean / kf
    slack = grid[None, :] - r[:, None] * t_grid[None, :]
    feasible = slack >= 0
    feasible[:, 0] = False
    has_root = feasible.any(axis=1)
    j1 = np.maximum(np.argmax(feasible, axis=1), 1)
    # Linear interpolation of the root between the last negative and the first positive point.
    s0, s1 = slack[rows, j1 - 1], slack[rows, j1]
    frac = np.where(s1 > s0, -s0 / np.where(s1 > s0, s1 - s0, 1.0), 1.0)
    batch = np.where(has_root, grid[j1 - 1] + frac * (grid[j1] - grid[j1 - 1]), cap)
    step = inst.decode_step(batch, shape.ctx_mean)
    cap_step = float(inst.decode_step(np.array([cap]), shape.ctx_mean)[0])
    capacity = kf * cap / cap_step / shape.steps_mean
    util = np.where(has_root, lam / capacity, np.maximum(lam / capacity, 1.0))

    # Per-step variance from batch-size and context fluctuations. The batch is an M/G/inf
    # population (Poisson, variance B) whose residence grows with B (step time rises), which
    # amplifies its variance by 1 / (1 - g), g = B T'(B) / T(B).
    db = inst.decode_step(batch + 1.0, shape.ctx_mean) - step
    gain = np.clip(batch * db / step, 0.0, 0.95)
    var_step = db * db * batch / (1.0 - gain) + inst.decode_slope**2 * batch * shape.ctx_var

    o, po = stats.osl.arrays()
    d = np.where(o - 1.0 >= 0.5, o - 1.0, 0.0)
    decodes = d > 0
    dd = np.where(decodes, d, 1.0)
    v, pv = stats.isl.arrays()
    move = float(inst.transfer_time(v) @ pv)
    in_tpot = 0.0 if inst.first_token_after_transfer else move
    base = step[:, None] + (in_tpot + 0.5 * step[:, None]) / dd[None, :]
    x = dd / max(shape.steps_mean, 1.0)
    avg = np.where(x > 1e-6, 2.0 * (x - 1.0 + np.exp(-x)) / np.maximum(x * x, 1e-12), 1.0)
    # The wait to join the batch is uniform over a step: variance T^2 / 12, spread over d tokens.
    join_var = (step[:, None] / dd[None, :]) ** 2 / 12.0
    sigma = np.maximum(np.sqrt(var_step[:, None] * avg[None, :] + join_var), 1e-12)

    # Admission waits when every batch slot is taken: Erlang C over all slots.
    slots = kf * max(math.floor(cap), 1)
    resid = step[:, None] * dd[None, :] + move + 0.5 * step[:, None]
    pd = po * decodes / shape.decode_share
    r_mean = resid @ pd
    r_scv = np.maximum((resid * resid) @ pd / (r_mean * r_mean) - 1.0, 0.0)
    adm = mgk_wait(slots, lam * shape.decode_share, r_mean, r_scv, stats.arrival_scv)

    tpot_mean = np.where(util < 1.0, scale * (base @ pd), np.inf)
    pred = DecodePrediction(
        servers=k, rate=lam, attainment=np.zeros(kf.shape), tpot_mean=tpot_mean, batch=batch,
        step_s=step, utilisation=util, capacity=capacity, admission=adm, scale=float(scale),
        _pd=pd, _dd=dd[None, :], _base=base, _sigma=sigma,
        _adm_in_tpot=not inst.first_token_after_transfer,
    )
    met = pred.cdf(np.full(kf.shape, tpot_slo))
    attain = met * shape.decode_share + (1.0 - shape.decode_share)
    object.__setattr__(pred, "attainment", np.where(pred.stable, attain, 0.0))
    return pred
