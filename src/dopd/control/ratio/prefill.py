"""Prefill side: predicted TTFT of ``k`` prefill instances at rate ``lam``, for many rows at once.

Model (see DESIGN.md "The P/D ratio solver"):

- Every request prefills on one of ``k`` instances fed from one FCFS queue (the router places
  by predicted TTFT, which balances the instances like a shared queue).
- A request that finds the instances idle is prefilled alone: ``solo(n)``. A request that has
  to wait is batched with the queue under the token budget: its share of the step is
  ``variable(n) + fixed(n) / m`` with ``m = min(1 / (1 - rho), k(n))`` prompts per step (the
  mean queue length of a busy M/M/k server, capped by the budget), and it completes at the end
  of that step, half a step after its own share on average. The per-request service time is
  the mix of the two by the probability of waiting; utilisation and this mix are solved as a
  fixed point.
- The queueing delay is Erlang C with the Allen-Cunneen correction for the service time's
  squared CV (computed on the prompt-length distribution, so E[ISL^2] matters) and the arrivals'
  squared CV; delayed requests wait an exponential time (:mod:`.queueing`). For a trace, whose
  bursts the fluid backlog of :mod:`.backlog` carries, arrivals are Poisson between clumps of
  near-simultaneous requests, and a clumped request also waits for half its clump (index of
  dispersion I: (I - 1) / 2 requests' full-batch work on the k instances).
- TTFT = wait + own service (+ the KV hand-off when the first token arrives with the KV, as in
  dopd's engines). Its CDF is exact on the length distribution:
  P(TTFT <= t) = sum_i p_i P(W <= t - r_i).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from dopd.control.ratio.instance import InstanceModel
from dopd.control.ratio.queueing import erlang_c, mgk_wait
from dopd.control.ratio.stats import WorkloadStats
from dopd.errors import require

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_FIXED_POINT_ROUNDS = 8


@dataclass(frozen=True, eq=False)
class PrefillPrediction:
    """Per row (a prefill count ``servers`` at arrival rate ``rate``), times already multiplied
    by the correction ``scale``.

    ``attainment`` = P(TTFT <= ttft_slo) (0 where the queue is unstable); ``ttft_mean`` the mean
    TTFT; ``utilisation`` = rate x mean service / servers; ``capacity`` the most requests per
    second the instances sustain with full batches; ``mean_service`` / ``scv_service`` the
    per-request service time moments the queue uses. :meth:`cdf` gives P(TTFT <= t) per row.
    """

    servers: IntArray
    rate: FloatArray
    attainment: FloatArray
    ttft_mean: FloatArray
    utilisation: FloatArray
    capacity: FloatArray
    mean_service: FloatArray
    scv_service: FloatArray
    p_wait: FloatArray
    scale: float
    _p: FloatArray = field(repr=False)
    _a: FloatArray = field(repr=False)
    _b: FloatArray = field(repr=False)
    _cm: FloatArray = field(repr=False)
    _inv_cm: FloatArray = field(init=False, repr=False)
    _stable: npt.NDArray[np.bool_] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # 1 / cond_mean, 0 where nobody waits (p_wait 0) or the queue never drains (inf).
        with np.errstate(divide="ignore"):
            inv = np.where((self._cm > 0) & np.isfinite(self._cm), 1.0 / self._cm, 0.0)
        object.__setattr__(self, "_inv_cm", inv)
        object.__setattr__(self, "_stable", self.utilisation < 1.0)

    @property
    def stable(self) -> npt.NDArray[np.bool_]:
        return self._stable

    def cdf(self, t: npt.ArrayLike, rows: IntArray | None = None) -> FloatArray:
        """P(TTFT <= t[i]) for row ``rows[i]`` (all rows when None); ``t`` is per row."""
        idx = np.arange(self.servers.size) if rows is None else np.asarray(rows)
        tt = np.asarray(t, dtype=np.float64)[:, None] / self.scale
        pw = self.p_wait[idx]
        waited = -np.expm1(-np.maximum(tt - self._b[idx], 0.0) * self._inv_cm[idx][:, None])
        per_bin = (1.0 - pw)[:, None] * (self._a[idx] <= tt) + pw[:, None] * waited
        out = per_bin @ self._p
        return np.where(self._stable[idx], np.minimum(out, 1.0), 0.0)

    def upper_bound(self, q: float, rows: IntArray | None = None) -> FloatArray:
        """A time (scaled) by which at least a share ``q`` of each row's requests have their
        first token (inf where unstable)."""
        idx = np.arange(self.servers.size) if rows is None else np.asarray(rows)
        with np.errstate(divide="ignore", invalid="ignore"):
            wq = np.where(self.p_wait[idx] <= 1 - q, 0.0,
                          self._cm[idx] * np.log(self.p_wait[idx] / (1 - q)))
        hi = np.maximum(self._a[idx].max(axis=1), self._b[idx].max(axis=1)) + wq
        return np.where(self.stable[idx], hi * self.scale, np.inf)


def predict_prefill(
    inst: InstanceModel,
    stats: WorkloadStats,
    servers: npt.ArrayLike,
    rate: npt.ArrayLike,
    ttft_slo: float,
    scale: float = 1.0,
) -> PrefillPrediction:
    """Predict TTFT for each row: ``servers`` (ints >= 1) and ``rate`` (req/s > 0) broadcast.

    ``scale`` multiplies every predicted TTFT (the online correction factor). The stats' own
    rate and rate levels are not used: the caller passes the rates to evaluate.
    """
    k_in, lam_in = np.broadcast_arrays(np.atleast_1d(np.asarray(servers, dtype=np.int64)),
                                       np.atleast_1d(np.asarray(rate, dtype=np.float64)))
    require(bool(np.all(k_in >= 1)), "prefill instance counts must be >= 1")
    require(bool(np.all(lam_in > 0)), "arrival rates must be > 0")
    require(ttft_slo > 0, f"TTFT SLO must be > 0, got {ttft_slo}")
    require(scale > 0, f"correction scale must be > 0, got {scale}")
    k = k_in.astype(np.int64)
    kf = k.astype(np.float64)
    lam = lam_in.astype(np.float64)
    v, p = stats.isl.arrays()
    solo, fixed, var = inst.prefill_tables(v)
    kmax = inst.batch_limit(v)
    move = inst.transfer_time(v) if inst.first_token_after_transfer else np.zeros_like(v)
    capacity = kf / float((var + fixed / kmax) @ p)

    s_mean = np.full(kf.shape, float(solo @ p))
    for _ in range(_FIXED_POINT_ROUNDS):
        rho = lam * s_mean / kf
        pw = erlang_c(kf, lam * s_mean)
        m = np.where(rho < 1.0, 1.0 / np.maximum(1.0 - rho, 1e-12), np.inf)
        batched = var[None, :] + fixed[None, :] / np.minimum(m[:, None], kmax[None, :])
        eff = (1.0 - pw)[:, None] * solo[None, :] + pw[:, None] * batched
        s_mean = 0.5 * (s_mean + eff @ p)
    rho = lam * s_mean / kf
    scv = np.maximum((eff * eff) @ p / (s_mean * s_mean) - 1.0, 0.0)
    if stats.series is not None:
        # Bursts of a trace are in its series (the fluid backlog); what is left is clumps of
        # near-simultaneous arrivals: a request waits for half its clump, batched, on k
        # instances, and the arrivals between clumps are taken as Poisson.
        wait = mgk_wait(kf, lam, s_mean, scv, 1.0)
        clump = 0.5 * max(stats.arrival_scv - 1.0, 0.0) * float((var + fixed / kmax) @ p) / kf
    else:
        wait = mgk_wait(kf, lam, s_mean, scv, stats.arrival_scv)
        clump = np.zeros_like(kf)
    pw, cm = wait.p_wait, wait.cond_mean

    # A batched request ends with its step: on average half a step after its own share.
    step_len = np.minimum(m[:, None], kmax[None, :]) * (batched @ p)[:, None]
    b = batched + 0.5 * np.maximum(step_len - batched, 0.0) + move[None, :] + clump[:, None]
    a = solo[None, :] + move[None, :] + clump[:, None]
    stable = rho < 1.0
    with np.errstate(invalid="ignore"):
        ttft_mean = np.where(stable, scale * ((1 - pw) * (a @ p) + pw * (b @ p) + wait.mean),
                             np.inf)
    pred = PrefillPrediction(
        servers=k, rate=lam, attainment=np.zeros(kf.shape), ttft_mean=ttft_mean,
        utilisation=rho, capacity=capacity, mean_service=s_mean, scv_service=scv, p_wait=pw,
        scale=float(scale), _p=p, _a=np.ascontiguousarray(a), _b=b, _cm=cm,
    )
    attain = pred.cdf(np.full(kf.shape, ttft_slo))
    object.__setattr__(pred, "attainment", attain)
    return pred
