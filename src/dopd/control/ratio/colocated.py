"""Colocated (all-MIXED) prediction: TPOT of ``N`` instances that batch prefill into decode steps.

Model (per instance, arrival rate ``r = lam / N``, the router spreading load evenly):

- Prefill share of the GPU: ``u_p = r * E[c(n)]`` with ``c(n)`` a prompt's cost when batched
  (:meth:`~.instance.InstanceModel.prefill_tables`: ``variable + fixed / k(n)``, the per-step
  overhead amortised over the prompts that fill the token budget; in a mixed step the decodes
  pay it anyway).
- Decode: a request decodes ``d = o - 1`` steps. With chunked prefill every step carries the
  running decodes plus prefill chunks, so the mean step is ``t = T(b) / (1 - u_p)`` (``T`` the
  decode-only step at batch ``b`` and the time-weighted context, the prefill work filling the
  rest), and Little's law gives ``b = r E[d] t``: the fixed point is the smallest root of
  ``b = r E[d] T(b) / (1 - u_p)`` below the batch cap (none: overload, TPOT unbounded).
- Spread of a request's TPOT around ``t + t / (2 d)`` (the join wait, as on the decode side),
  normal by moment matching over three independent terms: the prefill work that lands in its
  ``d t`` seconds (compound Poisson, variance ``r d t E[c^2]``, stretched by ``1 / (1 - u_p)``
  and spread over ``d`` tokens); batch-size fluctuations (the decode side's M/G/inf term,
  averaged over the request's life); and the join wait (uniform over a step). Short outputs
  average few steps, so they make the upper tail. P90 is the 0.9 quantile of that mixture over
  the output lengths: the factor above the mean is derived, not assumed; its remaining error
  (load variation within a window, uneven routing) goes into the online correction ``scale``.
- With prompt chunks capped (a MIXED token budget, ``mixed_step``), no step is longer than the
  decodes plus one capped chunk: TPOT is at most that step at the batch where Little's law
  balances with steps that long, and the prediction is the smaller of the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dopd.control.ratio.decode import _phi, decode_shape
from dopd.control.ratio.evaluate import side_tables
from dopd.control.ratio.instance import InstanceModel
from dopd.control.ratio.stats import WorkloadStats
from dopd.errors import require
from dopd.types import SLO

_BATCH_POINTS = 512

StepBound = Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]
"""Decode-only step times to the longest steps a MIXED instance runs with those decodes
(``mixed_step`` of :func:`predict_colocated`)."""


@dataclass(frozen=True, slots=True)
class ColocatedPrediction:
    """What :func:`predict_colocated` expects of ``instances`` MIXED instances at ``rate``.

    ``prefill_share`` is ``u_p``, ``batch`` the mean running batch per instance, ``step_s`` the
    mean step, ``tpot_mean`` / ``tpot_q`` the mean and the ``q`` quantile of TPOT over the
    requests that decode (times ``scale``), ``attainment`` P(TPOT <= SLO) over all requests.
    Unstable (prefill share >= 1 or no batch below the cap): TPOT inf, attainment 0.
    """

    instances: int
    rate: float
    prefill_share: float
    batch: float
    step_s: float
    tpot_mean: float
    tpot_q: float
    q: float
    attainment: float
    stable: bool


def _unstable(n: int, rate: float, u_p: float, cap: float, q: float) -> ColocatedPrediction:
    return ColocatedPrediction(n, rate, u_p, cap, math.inf, math.inf, math.inf, q, 0.0, False)


def predict_colocated(inst: InstanceModel, stats: WorkloadStats, instances: int,
                      tpot_slo: float, q: float = 0.9, scale: float = 1.0,
                      rate: float | None = None,
                      mixed_step: StepBound | None = None) -> ColocatedPrediction:
    """Predict TPOT of ``instances`` MIXED instances under ``stats`` (at ``rate``, default
    ``stats.rate``); see the module doc. ``scale`` multiplies every predicted TPOT.

    ``mixed_step`` (None: prompt chunks of the whole token budget) maps a decode-only step time
    to the longest step the instance runs with that decode batch when its prompt chunks are
    capped (the policy's MIXED token budget): no step is longer, so TPOT is at most that
    step at the batch where Little's law balances, whatever the prefill share; the prediction
    is the smaller of the two."""
    require(instances >= 1, f"instance count must be >= 1, got {instances}")
    require(tpot_slo > 0, f"TPOT SLO must be > 0, got {tpot_slo}")
    require(0 < q < 1, f"quantile must be in (0, 1), got {q}")
    require(scale > 0, f"correction scale must be > 0, got {scale}")
    lam = stats.rate if rate is None else rate
    require(lam > 0, f"rate must be > 0, got {lam}")
    r = lam / instances
    v, pv = stats.isl.arrays()
    _, fixed, var = inst.prefill_tables(v)
    cost = var + fixed / inst.batch_limit(v)
    u_p = r * float(cost @ pv)
    c2 = float((cost * cost) @ pv)
    shape = decode_shape(inst, stats)
    cap = shape.batch_cap
    if u_p >= 1.0:
        return _unstable(instances, lam, u_p, cap, q)
    stretch = 1.0 / (1.0 - u_p)
    grid = np.linspace(0.0, cap, _BATCH_POINTS)
    t_grid = inst.decode_step(grid, shape.ctx_mean) * stretch
    slack = grid - r * shape.steps_mean * t_grid
    ok = slack >= 0
    ok[0] = False
    if not ok.any():
        return _unstable(instances, lam, u_p, cap, q)
    j = max(int(np.argmax(ok)), 1)
    s0, s1 = slack[j - 1], slack[j]
    frac = -s0 / (s1 - s0) if s1 > s0 else 1.0
    b = float(grid[j - 1] + frac * (grid[j] - grid[j - 1]))
    t_dec = float(inst.decode_step(np.array([b]), shape.ctx_mean)[0])
    t = t_dec * stretch

    o, po = stats.osl.arrays()
    d = np.where(o - 1.0 >= 0.5, o - 1.0, 0.0)
    decodes = d > 0
    dd = np.where(decodes, d, 1.0)
    pd = po * decodes / max(shape.decode_share, 1e-12)
    base = t + 0.5 * t / dd
    var_prefill = r * t * c2 / dd * stretch * stretch
    db = float(inst.decode_step(np.array([b + 1.0]), shape.ctx_mean)[0]) - t_dec
    gain = min(max(b * db / t_dec, 0.0), 0.95)
    var_step = (db * db * b / (1.0 - gain)) * stretch * stretch
    x = dd / max(shape.steps_mean, 1.0)
    avg = np.where(x > 1e-6, 2.0 * (x - 1.0 + np.exp(-x)) / np.maximum(x * x, 1e-12), 1.0)
    join = (t / dd) ** 2 / 12.0
    sigma = np.maximum(np.sqrt(var_prefill + var_step * avg + join), 1e-12)

    def cdf(h: float) -> float:
        return float(_phi((h / scale - base) / sigma) @ pd)

    lo, hi = 0.0, float((base + 8.0 * sigma).max()) * scale
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
    met = cdf(tpot_slo) * shape.decode_share + (1.0 - shape.decode_share)
    mean = scale * float(base @ pd)
    if mixed_step is not None:
        bound = scale * _capped_step(inst, r, shape.steps_mean, shape.ctx_mean, cap, mixed_step)
        if bound < hi:
            hi, mean = bound, min(mean, bound)
            met = max(met, 1.0 if bound <= tpot_slo else 0.0)
    return ColocatedPrediction(instances, lam, u_p, b, t, mean, hi, q,
                               float(min(met, 1.0)), True)


def _capped_step(inst: InstanceModel, r: float, steps_mean: float, ctx_mean: float, cap: float,
                 mixed_step: StepBound) -> float:
    """The longest step of a MIXED instance with capped chunks at the decode batch where
    Little's law balances with steps that long (inf: none below the batch cap)."""
    grid = np.linspace(1.0, max(cap, 1.0), _BATCH_POINTS)
    longest = np.asarray(mixed_step(inst.decode_step(grid, ctx_mean)), dtype=np.float64)
    ok = grid - r * steps_mean * longest >= 0
    return float(longest[int(np.argmax(ok))]) if ok.any() else math.inf


def colocated_ttft_attainment(inst: InstanceModel, stats: WorkloadStats, slo: SLO,
                              pred: ColocatedPrediction) -> float:
    """P(TTFT <= SLO) of the ``pred.instances`` MIXED instances of ``pred``: the solver's prefill
    side (M/G/k over the prompt-length mix, burstiness included) with every instance serving
    prompts, at the rate raised by the decode work each step carries (``u_d``, the GPU share
    of the marginal decode cost ``T(b) - T(0)`` of the running batch: a prompt shares its steps
    with the decodes). 0 when the prediction is unstable."""
    if not pred.stable:
        return 0.0
    shape = decode_shape(inst, stats)
    t0 = float(inst.decode_step(np.array([0.0]), shape.ctx_mean)[0])
    t_dec = float(inst.decode_step(np.array([pred.batch]), shape.ctx_mean)[0])
    r = pred.rate / pred.instances
    u_d = r * shape.steps_mean * max(t_dec - t0, 0.0) / max(pred.batch, 1e-9) \
        if pred.batch > 0 else 0.0
    if u_d >= 0.95:
        return 0.0
    tab = side_tables(inst, stats, slo, pred.instances, pred.instances,
                      pred.rate / (1.0 - u_d))
    return float(tab.prefill_attainment[0])
