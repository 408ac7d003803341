"""Decision reasons an operator can read: why a split is kept or changed, in numbers.

:func:`why` turns what a plan rests on (the load forecast, the predicted P90 latency and SLO
attainment of the split that runs and of the one aimed for) into one sentence such as
``forecast 12.3 req/s (upper 14.1, planned for); 2P:1D predicted TTFT p90 820 ms > SLO 500 ms,
attainment 62% < 90% -> 3P:0D ...``. It names the SLO a split is predicted to miss, so the
reason says WHY rather than repeating the switch. Pure functions; no state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dopd.control.manager.split import Split
from dopd.types import SLO


@dataclass(frozen=True, slots=True)
class Outlook:
    """A split's predicted P90 latency (seconds; ``inf`` for an overloaded side, None when not
    predicted) and SLO attainment (fraction, None when not predicted)."""

    split: Split
    ttft_p90: float | None
    tpot_p90: float | None
    attainment: float | None

    @staticmethod
    def of(split: Split, predicted: Mapping[str, Any] | None) -> Outlook | None:
        """From a solver prediction dict (``ttft_p90``, ``tpot_p90``, ``attainment``); None
        when there is none."""
        if predicted is None:
            return None

        def get(key: str) -> float | None:
            value = predicted.get(key)
            return None if value is None else float(value)

        return Outlook(split, get("ttft_p90"), get("tpot_p90"), get("attainment"))


def seconds(value: float | None) -> str:
    """A latency for people: ``820 ms``, ``1.25 s``; ``unbounded`` for inf, ``?`` for None."""
    if value is None or math.isnan(value):
        return "?"
    if math.isinf(value):
        return "unbounded"
    return f"{value * 1e3:.0f} ms" if value < 1.0 else f"{value:.2f} s"


def _percent(value: float) -> str:
    return f"{100 * value:.0f}%"


def rate(value: float) -> str:
    """A rate in req/s for people: ``0.00``, ``2.86``, ``12.3``, ``1234``."""
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def forecast_text(mean: float | None, upper: float | None, planned: float | None) -> str:
    """``forecast 3.10 req/s (upper 4.20, planned for)``; empty without a forecast."""
    if mean is None:
        return ""
    text = f"forecast {rate(mean)} req/s"
    if upper is not None and upper > mean * (1 + 1e-6):
        at_upper = planned is not None and abs(planned - upper) <= 1e-6 * max(upper, 1.0)
        text += f" (upper {rate(upper)}{', planned for' if at_upper else ''})"
    elif planned is not None and abs(planned - mean) > 1e-6 * max(mean, 1.0):
        text += f" (planned for {rate(planned)})"
    return text


def outlook_text(o: Outlook, slo: SLO) -> str:
    """``2P:1D predicted TTFT p90 820 ms > SLO 500 ms, TPOT p90 40 ms, attainment 62% <
    90%``: every figure, each missed target called out."""
    parts = []
    for name, value, target in (("TTFT", o.ttft_p90, slo.ttft_s), ("TPOT", o.tpot_p90,
                                                                     slo.tpot_s)):
        if value is None:
            continue
        part = f"{name} p90 {seconds(value)}"
        if value > target:
            part += f" > SLO {seconds(target)}"
        parts.append(part)
    if o.attainment is not None:
        part = f"attainment {_percent(o.attainment)}"
        if o.attainment < slo.attainment:
            part += f" < {_percent(slo.attainment)}"
        parts.append(part)
    return f"{o.split} predicted " + ", ".join(parts) if parts else f"{o.split} (no prediction)"


def why(slo: SLO, *, current: Outlook | None, target: Outlook | None,
        forecast: str = "", trigger: str = "") -> str:
    """The reason of a plan in one line: ``trigger; forecast; current -> target`` (the parts
    there are). With ``target`` equal to ``current`` (or missing) it reads as a hold."""
    parts = [p for p in (trigger, forecast) if p]
    if current is not None and (target is None or target.split == current.split):
        verdict = "holds" if _meets(current, slo) else "best split of the pool"
        parts.append(f"keep {outlook_text(current, slo)} ({verdict})")
    elif target is not None:
        head = outlook_text(current, slo) + " -> " if current is not None else "-> "
        parts.append(head + outlook_text(target, slo))
    return "; ".join(parts)


def _meets(o: Outlook, slo: SLO) -> bool:
    return (o.attainment is None or o.attainment >= slo.attainment) \
        and (o.ttft_p90 is None or o.ttft_p90 <= slo.ttft_s) \
        and (o.tpot_p90 is None or o.tpot_p90 <= slo.tpot_s)
