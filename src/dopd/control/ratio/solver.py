"""The P/D ratio solver: how many prefill and decode instances a load needs.

:func:`solve` is pure and fast (a few milliseconds for a 64-instance pool): every candidate split
is predicted at once with the vectorised prefill (:mod:`.prefill`) and decode (:mod:`.decode`)
models. A request meets its SLO when TTFT <= ttft_s and TPOT <= tpot_s; the two sides are taken
as independent, so predicted attainment = P(TTFT ok) x P(TPOT ok), and goodput = attainment x
rate.

- Fixed pool of ``instances`` N: all N - 1 splits are scanned and the one with the largest
  predicted goodput wins. Splits within ``tie_tolerance`` of the best attainment are equally
  good; among them the one whose tighter side has the most capacity headroom is taken, so spare
  instances go where they buy the most margin. When the minimal counts exceed N, the best split
  is still the goodput maximum (the reason says so).
- Elastic pool (``instances=None``): provisioned for the forecast's upper rate bound. The
  smallest prefill count whose P(TTFT <= SLO) reaches the attainment target (i.e. P90 TTFT <=
  SLO at a 90 % target), the smallest decode count whose P(TPOT <= SLO) does and that covers
  Little's-law demand at the TPOT-feasible batch B* with ``decode_headroom``; then instances are
  added one at a time where the joint attainment gains most until it reaches the target, within
  ``max_instances`` (the cost bound). New instances are ready after ``cold_start_s``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from dopd.control.ratio.correction import CorrectionFactors
from dopd.control.ratio.decode import decode_shape, max_batch_for_tpot
from dopd.control.ratio.evaluate import (
    PairScores,
    SideTables,
    pair_quantiles,
    score_pairs,
    side_tables,
)
from dopd.control.ratio.instance import InstanceModel
from dopd.control.ratio.stats import WorkloadStats, as_stats
from dopd.errors import require
from dopd.types import SLO


@dataclass(frozen=True, slots=True)
class SolverConfig:
    """Knobs of :func:`solve`.

    ``variance_term=False`` is the ablation that replaces E[ISL^2] by E[ISL]^2 (every prompt at
    the mean length). ``quantile`` is the latency percentile reported (and, in an elastic pool,
    required to meet the SLO); None uses the SLO's attainment target. ``decode_headroom`` is the
    spare fraction of decode capacity above Little's law in an elastic pool; ``max_instances``
    bounds an elastic pool (its cost bound) and the counts searched.
    """

    variance_term: bool = True
    quantile: float | None = None
    decode_headroom: float = 0.1
    max_instances: int = 64
    cold_start_s: float = 30.0
    tie_tolerance: float = 1e-3

    def __post_init__(self) -> None:
        require(self.quantile is None or 0 < self.quantile < 1,
                f"quantile must be in (0, 1), got {self.quantile}")
        require(self.decode_headroom >= 0, "decode headroom must be >= 0")
        require(self.max_instances >= 2, f"max instances must be >= 2, got {self.max_instances}")
        require(self.cold_start_s >= 0, "cold start must be >= 0 s")
        require(0 <= self.tie_tolerance < 1, "tie tolerance must be in [0, 1)")


@dataclass(frozen=True, slots=True)
class SplitPrediction:
    """Predicted behaviour of one (n_prefill, n_decode) split at ``rate`` req/s.

    Latency percentiles are at the plan's quantile (inf when a side is overloaded);
    utilisations are demand over capacity (>= 1: overloaded).
    """

    n_prefill: int
    n_decode: int
    ttft_p90: float
    tpot_p90: float
    ttft_attainment: float
    tpot_attainment: float
    attainment: float
    goodput: float
    prefill_utilisation: float
    decode_utilisation: float
    decode_batch: float


@dataclass(frozen=True, slots=True)
class PDPlan:
    """The solver's answer: counts, predictions for them, the per-split table and why.

    ``splits`` is the scanned table (fixed pool: all N - 1 splits; elastic: the chosen split and
    its one-instance neighbours). ``b_star`` is the largest TPOT-feasible decode batch and
    ``decode_tokens_per_s`` the per-instance throughput B* / T(B*); ``ready_after_s`` is when
    newly started instances can serve (0 when none are added).
    """

    n_prefill: int
    n_decode: int
    ttft_p90: float
    tpot_p90: float
    attainment: float
    goodput: float
    rate: float
    quantile: float
    mode: str
    reason: str
    splits: tuple[SplitPrediction, ...] = field(repr=False)
    b_star: int = 0
    decode_tokens_per_s: float = 0.0
    ready_after_s: float = 0.0

    @property
    def total(self) -> int:
        return self.n_prefill + self.n_decode

    def predicted(self, n_prefill: int, n_decode: int, n_mixed: int = 0) -> dict[str, float]:
        """What the plan predicts for a split: its own row when the plan scanned it, else the
        plan's figures (marked ``split_of_plan``)."""
        row = next((r for r in self.splits if (r.n_prefill, r.n_decode)
                    == (n_prefill, n_decode)), None) if n_mixed == 0 else None
        if row is None:
            return {"ttft_p90": self.ttft_p90, "tpot_p90": self.tpot_p90,
                    "attainment": self.attainment, "rate": self.rate, "split_of_plan": 1.0}
        return {"ttft_p90": row.ttft_p90, "tpot_p90": row.tpot_p90,
                "attainment": row.attainment, "rate": self.rate}

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (inf becomes None)."""
        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            return value
        return clean(asdict(self))


def _rows(tab: SideTables, n_p: np.ndarray, n_d: np.ndarray, q: float, rate: float
          ) -> tuple[PairScores, list[SplitPrediction]]:
    scores = score_pairs(tab, n_p, n_d)
    ttft, tpot = pair_quantiles(tab, n_p, n_d, q)
    rows = [
        SplitPrediction(
            n_prefill=int(n_p[i]), n_decode=int(n_d[i]), ttft_p90=float(ttft[i]),
            tpot_p90=float(tpot[i]), ttft_attainment=float(scores.ttft_attainment[i]),
            tpot_attainment=float(scores.tpot_attainment[i]),
            attainment=float(scores.attainment[i]), goodput=float(scores.attainment[i]) * rate,
            prefill_utilisation=float(scores.prefill_utilisation[i]),
            decode_utilisation=float(scores.decode_utilisation[i]),
            decode_batch=float(scores.decode_batch[i]),
        )
        for i in range(n_p.size)
    ]
    return scores, rows


def _prepare(load: Any, slo: SLO, config: SolverConfig) -> tuple[WorkloadStats, float]:
    stats = as_stats(load)
    if not config.variance_term:
        stats = stats.without_variance()
    q = slo.attainment if config.quantile is None else config.quantile
    return stats, min(max(q, 0.5), 0.999)


def predict(
    load: Any, inst: InstanceModel, slo: SLO, n_prefill: int, n_decode: int,
    config: SolverConfig = SolverConfig(), correction: CorrectionFactors | None = None,
) -> SplitPrediction:
    """Predictions for one given split at the load's rate (use ``correction=None`` for the raw
    model, as :meth:`CorrectionFactors.update` needs)."""
    require(n_prefill >= 1 and n_decode >= 1, "a split needs >= 1 prefill and >= 1 decode instance")
    stats, q = _prepare(load, slo, config)
    c = correction or CorrectionFactors()
    lo, hi = min(n_prefill, n_decode), max(n_prefill, n_decode)
    tab = side_tables(inst, stats, slo, lo, hi, stats.rate, c.ttft, c.tpot)
    _, rows = _rows(tab, np.array([n_prefill]), np.array([n_decode]), q, stats.rate)
    return rows[0]


def solve(
    load: Any,
    inst: InstanceModel,
    slo: SLO,
    instances: int | None = None,
    *,
    config: SolverConfig = SolverConfig(),
    correction: CorrectionFactors | None = None,
    current: int | None = None,
) -> PDPlan:
    """Plan the P/D split for ``load`` (a WorkloadStats, forecast, monitor window or Workload).

    ``instances`` = N fixes the pool (N >= 2); None plans an elastic pool. ``current`` is the
    number of instances running now (elastic: instances beyond it need a cold start).
    """
    stats, q = _prepare(load, slo, config)
    c = correction or CorrectionFactors()
    shape = decode_shape(inst, stats)
    b_star = max_batch_for_tpot(inst, shape, slo.tpot_s / c.tpot)
    tok_s = b_star / float(inst.decode_step(np.array([float(b_star)]), shape.ctx_mean)[0]) \
        if b_star else 0.0
    if instances is not None:
        require(isinstance(instances, int) and instances >= 2,
                f"a fixed pool needs at least 2 instances, got {instances}")
        return _fixed(stats, inst, slo, instances, q, c, config, b_star, tok_s)
    return _elastic(stats, inst, slo, q, c, config, b_star, tok_s, shape.steps_mean, current)


def _first_at_least(values: np.ndarray, target: float) -> int:
    """1-based index of the first value >= target, 0 if none."""
    hit = np.flatnonzero(values >= target)
    return int(hit[0]) + 1 if hit.size else 0


def _fixed(stats: WorkloadStats, inst: InstanceModel, slo: SLO, n: int, q: float,
           c: CorrectionFactors, config: SolverConfig, b_star: int, tok_s: float) -> PDPlan:
    tab = side_tables(inst, stats, slo, 1, n - 1, stats.rate, c.ttft, c.tpot)
    n_p = np.arange(1, n, dtype=np.int64)
    n_d = n - n_p
    scores, rows = _rows(tab, n_p, n_d, q, stats.rate)
    attain = scores.attainment
    headroom = np.minimum(1.0 - scores.prefill_utilisation, 1.0 - scores.decode_utilisation)
    best = float(attain.max())
    tied = np.flatnonzero(attain >= best - config.tie_tolerance)
    chosen = rows[int(tied[np.argmax(headroom[tied])])]
    side_p = score_pairs(tab, n_p, np.full_like(n_p, n - 1)).ttft_attainment
    side_d = score_pairs(tab, np.full_like(n_p, n - 1), n_p).tpot_attainment
    need_p, need_d = _first_at_least(side_p, q), _first_at_least(side_d, q)
    if need_p and need_d and need_p + need_d <= n:
        why = (f"minimal counts P={need_p} D={need_d} fit the pool of {n}; "
               f"{n - need_p - need_d} spare placed by predicted goodput")
    elif best <= 0.0:
        why = (f"load {stats.rate:.3g} req/s overloads every split of {n}; "
               f"split balances the capacity headroom")
    else:
        why = (f"minimal counts exceed the pool of {n}; split maximises predicted goodput "
               f"({chosen.goodput:.3g} of {stats.rate:.3g} req/s)")
    return PDPlan(
        n_prefill=chosen.n_prefill, n_decode=chosen.n_decode, ttft_p90=chosen.ttft_p90,
        tpot_p90=chosen.tpot_p90, attainment=chosen.attainment, goodput=chosen.goodput,
        rate=stats.rate, quantile=q, mode="fixed", reason=why, splits=tuple(rows),
        b_star=b_star, decode_tokens_per_s=tok_s,
    )


def _elastic(stats: WorkloadStats, inst: InstanceModel, slo: SLO, q: float,
             c: CorrectionFactors, config: SolverConfig, b_star: int, tok_s: float,
             steps_mean: float, current: int | None) -> PDPlan:
    rate = stats.peak_rate
    m = config.max_instances
    tab = side_tables(inst, stats, slo, 1, m, rate, c.ttft, c.tpot)
    counts = np.arange(1, m + 1, dtype=np.int64)
    # Each side alone, with the other side ample (m instances).
    side_p = score_pairs(tab, counts, np.full_like(counts, m)).ttft_attainment
    side_d = score_pairs(tab, np.full_like(counts, m), counts).tpot_attainment
    n_p = _first_at_least(side_p, q) or m
    little = math.ceil(rate * steps_mean * (1 + config.decode_headroom) / tok_s) if tok_s else m
    n_d = max(_first_at_least(side_d, q) or m, min(little, m))
    minimal = (n_p, n_d)

    def joint(a: int, b: int) -> float:
        return float(score_pairs(tab, np.array([a]), np.array([b])).attainment[0])

    while n_p + n_d > m and (n_p > 1 or n_d > 1):
        # Over the cost bound: give back the instance whose loss hurts least.
        drop_p = joint(n_p - 1, n_d) if n_p > 1 else -1.0
        drop_d = joint(n_p, n_d - 1) if n_d > 1 else -1.0
        if drop_p >= drop_d:
            n_p -= 1
        else:
            n_d -= 1
    current_a = joint(n_p, n_d)
    while current_a < slo.attainment and n_p + n_d < m:
        add_p = joint(n_p + 1, n_d) if n_p < m else -1.0
        add_d = joint(n_p, n_d + 1) if n_d < m else -1.0
        if max(add_p, add_d) <= current_a:
            break
        if add_p >= add_d:
            n_p, current_a = n_p + 1, add_p
        else:
            n_d, current_a = n_d + 1, add_d
    pairs = [(n_p, n_d)]
    for dp, dd in ((-1, 1), (1, -1), (1, 0), (0, 1), (-1, 0), (0, -1)):
        a, b = n_p + dp, n_d + dd
        if 1 <= a <= m and 1 <= b <= m:
            pairs.append((a, b))
    _, rows = _rows(tab, np.array([a for a, _ in pairs]), np.array([b for _, b in pairs]), q,
                    rate)
    chosen = rows[0]
    why = (f"elastic for {rate:.3g} req/s (upper bound): each side alone needs "
           f"P={minimal[0]} (TTFT) and D={minimal[1]} (TPOT, Little's law {little} at "
           f"B*={b_star})")
    if (n_p, n_d) != minimal:
        why += f"; joint target needs P={n_p} D={n_d}"
    if chosen.attainment < slo.attainment:
        limit = f"cost bound of {m} instances" if n_p + n_d >= m else "no added instance"
        why = (f"{limit} reached: predicted attainment {chosen.attainment:.3f} < target "
               f"{slo.attainment:g} at {rate:.3g} req/s")
    ready = config.cold_start_s if current is not None and n_p + n_d > current else 0.0
    return PDPlan(
        n_prefill=n_p, n_decode=n_d, ttft_p90=chosen.ttft_p90, tpot_p90=chosen.tpot_p90,
        attainment=chosen.attainment, goodput=chosen.goodput, rate=rate, quantile=q,
        mode="elastic", reason=why,
        splits=tuple(sorted(rows, key=lambda r: (r.n_prefill + r.n_decode, r.n_prefill))),
        b_star=b_star, decode_tokens_per_s=tok_s, ready_after_s=ready,
    )
