"""What ``/v1/cluster`` shows of the policy's thinking: its plans and forecasts, typed.

Policies that plan (``dopd``, ``reactive``, ``sla-planner``) keep a
:class:`~dopd.control.manager.DecisionLog` in their ``log`` attribute; :func:`policy_log`
finds it. :func:`plan_view` turns one of its records into a :class:`PlanView` (the forecast,
the split that runs and the one aimed for with their predicted P90 latency and SLO attainment,
what was observed over the next interval, and the reason in words); :func:`latest_forecast`
is the newest forecast of the arrival rate and its upper bound. Policies without a log
(``colocated``, ``static``) plan nothing: the views are None.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dopd.control.manager import DecisionLog, Split

_SCAN = 8  # records searched back for the newest forecast (alarms may log none)


@dataclass(frozen=True, slots=True)
class Prediction:
    """The solver's prediction for one split: P90 TTFT and TPOT (seconds) and SLO attainment
    (fraction). ``overloaded`` is True when a predicted latency is unbounded (that side cannot
    keep up); such a latency, or one not predicted, is None."""

    ttft_p90_s: float | None
    tpot_p90_s: float | None
    attainment: float | None
    overloaded: bool


@dataclass(frozen=True, slots=True)
class Observation:
    """What the policy measured over the interval after a plan: requests finished, their P90
    TTFT and TPOT (seconds) and SLO attainment (None when none finished)."""

    finished: int
    ttft_p90_s: float | None
    tpot_p90_s: float | None
    attainment: float | None


@dataclass(frozen=True, slots=True)
class PlanView:
    """One plan of the policy (times in seconds since the controller started; rates in req/s;
    splits as ``2P:1D`` or ``1P:1D:1M``). ``acted``: whether it ordered any change. ``why``
    is the reason for people (the forecast, the predictions against the SLO), ``detail`` the
    controller's own trace."""

    t: float
    policy: str
    current: str | None
    target: str | None
    acted: bool
    forecast_rps: float | None
    forecast_upper_rps: float | None
    planned_rps: float | None
    predicted_current: Prediction | None
    predicted_target: Prediction | None
    observed_next: Observation | None
    why: str
    detail: str


def policy_log(policy: object) -> DecisionLog | None:
    """The policy's decision log, if it keeps one."""
    log = getattr(policy, "log", None)
    return log if isinstance(log, DecisionLog) else None


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _split(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return None
    return str(Split(int(value.get("prefill", 0)), int(value.get("decode", 0)),
                     int(value.get("mixed", 0))))


def _prediction(value: Any) -> Prediction | None:
    if not isinstance(value, Mapping):
        return None
    overloaded = any(k in value and value[k] is None for k in ("ttft_p90", "tpot_p90"))
    return Prediction(_float(value.get("ttft_p90")), _float(value.get("tpot_p90")),
                      _float(value.get("attainment")), overloaded)


def _rates(forecast: Any) -> tuple[float | None, float | None]:
    if not isinstance(forecast, Mapping) or forecast.get("rate") is None:
        return None, None
    rate = float(forecast["rate"])
    upper = forecast.get("rate_upper")
    return rate, None if upper is None else max(float(upper), rate)


def plan_view(record: Mapping[str, Any]) -> PlanView:
    """The :class:`PlanView` of a decision-log record."""
    rate, upper = _rates(record.get("forecast"))
    predicted = record.get("predicted")
    planned = predicted.get("rate") if isinstance(predicted, Mapping) else None
    seen = record.get("observed")
    observed = None if not isinstance(seen, Mapping) else Observation(
        int(seen.get("finished") or 0), _float(seen.get("ttft_p90")),
        _float(seen.get("tpot_p90")), _float(seen.get("attainment")))
    return PlanView(
        t=round(float(record["t"]), 3), policy=str(record.get("policy", "")),
        current=_split(record.get("current")), target=_split(record.get("target")),
        acted=bool(record.get("actions")), forecast_rps=rate, forecast_upper_rps=upper,
        planned_rps=_float(planned), predicted_current=_prediction(
            record.get("predicted_current")),
        predicted_target=_prediction(predicted), observed_next=observed,
        why=str(record.get("why") or record.get("reason", "")),
        detail=str(record.get("reason", "")))


def latest_plan(log: DecisionLog | None) -> PlanView | None:
    """The newest plan of ``log`` (None without a log or before the first plan)."""
    if log is None or not log.records:
        return None
    return plan_view(log.records[-1])


def latest_forecast(log: DecisionLog | None) -> tuple[float | None, float | None]:
    """The newest forecast of the arrival rate and its upper bound, in req/s ((None, None)
    when the policy makes none)."""
    if log is None:
        return None, None
    for record in reversed(log.records[-_SCAN:]):
        rate, upper = _rates(record.get("forecast"))
        if rate is not None:
            return rate, upper
    return None, None
