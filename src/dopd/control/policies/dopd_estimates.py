"""What the ``dopd`` policy estimates before and beside its solver: the prior load it starts
from (:data:`PRIOR`, :func:`busy_rate`), the decode side's output-length estimate by Little's
law (:func:`decode_output_estimate`) a plan's prediction for any P/D split
(:func:`split_prediction`) and the decision log's reason for a move (:func:`explain_move`).
Pure functions of their arguments."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from dopd.control.forecast import LoadForecast
from dopd.control.manager import Split
from dopd.control.manager.explain import Outlook, forecast_text, why
from dopd.control.policies.base import ClusterView
from dopd.control.ratio import (
    CorrectionFactors,
    InstanceModel,
    LengthDist,
    PDPlan,
    SolverConfig,
    WorkloadStats,
    predict,
    solve,
)
from dopd.types import SLO, InstanceState, Role

PRIOR = {"mean_in": 1155.0, "m2_in": 1155.0**2 * 1.8, "mean_out": 211.0,
         "m2_out": 211.0**2 * 2.0}
"""Length moments assumed before any are measured (like the Azure conversation trace)."""


def prior_stats(rate: float) -> WorkloadStats:
    """The prior load (:data:`PRIOR` lengths) at ``rate`` requests per second."""
    return WorkloadStats(rate, LengthDist.from_moments(PRIOR["mean_in"], PRIOR["m2_in"]),
                         LengthDist.from_moments(PRIOR["mean_out"], PRIOR["m2_out"]))


def busy_rate(inst: InstanceModel, slo: SLO, n: int, config: SolverConfig) -> float:
    """The prior load's rate at which the solver's best split of ``n`` just meets the SLO's
    attainment target (bisection on the rate)."""
    lo, hi = 0.01, 1.0
    while solve(prior_stats(hi), inst, slo, n, config=config).attainment >= slo.attainment:
        lo, hi = hi, hi * 2
        if hi > 1e5:
            return lo
    for _ in range(20):
        mid = math.sqrt(lo * hi)
        ok = solve(prior_stats(mid), inst, slo, n, config=config).attainment >= slo.attainment
        lo, hi = (mid, hi) if ok else (lo, mid)
    return lo


def decode_output_estimate(view: ClusterView, rate: float) -> float | None:
    """Mean output length by Little's law on the decode side: decode tokens per second (the
    requests each ACTIVE decode or mixed instance holds, running or waiting for its memory,
    over its recent step time) over the arrival rate, plus the first token. Counting the
    waiting ones as if they ran over-estimates the length while a queue builds, which is the
    safe side: it is a decode shortage. None without arrivals or decodes."""
    if rate <= 0:
        return None
    tokens_per_s = sum((v.decode_batch + v.pending_decodes) / v.recent_step_s
                       for v in view.instances
                       if v.role != Role.PREFILL and v.state == InstanceState.ACTIVE
                       and v.decode_batch > 0 and v.recent_step_s > 0)
    return 1.0 + tokens_per_s / rate if tokens_per_s > 0 else None


def split_prediction(plan: PDPlan, stats: WorkloadStats, split: Split, inst: InstanceModel,
                     slo: SLO, config: SolverConfig, correction: CorrectionFactors
                     ) -> dict[str, float] | None:
    """``plan``'s prediction for a P/D ``split`` (its own row, else the model's with the same
    ``correction``); None for a split with mixed instances or an empty side."""
    if split.mixed or split.prefill < 1 or split.decode < 1:
        return None
    got = plan.predicted(split.prefill, split.decode)
    if "split_of_plan" not in got:
        return got
    row = predict(stats, inst, slo, split.prefill, split.decode, config, correction)
    return {"ttft_p90": row.ttft_p90, "tpot_p90": row.tpot_p90,
            "attainment": row.attainment, "rate": stats.rate}


SplitPredictor = Callable[[PDPlan, WorkloadStats, Split], dict[str, float] | None]


def explain_move(slo: SLO, basis: tuple[LoadForecast, WorkloadStats, PDPlan] | None,
                 current: Split, target: Split, predict_split: SplitPredictor,
                 trigger: str = "", predicted: dict[str, float] | None = None
                 ) -> dict[str, Any]:
    """The log's ``forecast``, ``predicted``, ``predicted_current`` and ``why`` for a move from
    ``current`` to ``target`` on the last plan ``basis`` (forecast, load, plan; None before the
    first plan: only the ``trigger``). ``predicted`` overrides the target's prediction."""
    if basis is None:
        return {"why": trigger} if trigger else {}
    fc, stats, plan = basis
    if predicted is None:
        predicted = predict_split(plan, stats, target)
    baseline = predict_split(plan, stats, current)
    text = why(slo, current=Outlook.of(current, baseline), target=Outlook.of(target, predicted),
               forecast=forecast_text(fc.rate, fc.rate_upper, stats.rate), trigger=trigger)
    return {"forecast": fc, "predicted": predicted, "predicted_current": baseline, "why": text}
