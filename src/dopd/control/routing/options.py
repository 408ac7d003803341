"""Options of the length-aware router: one switch per feature, parsed from the router spec.

Spec syntax (as for every router): ``length-aware`` or ``length-aware:KEY=VALUE,...``, e.g.
``length-aware:bypass=off,admit_k=3``. Booleans accept on/off, true/false, yes/no, 1/0;
``auto`` (or ``none``) selects the documented automatic value of an optional number.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any

from dopd.errors import DopdError, require
from dopd.workload.spec import split_spec

ORDERS = ("short-first", "fcfs")


@dataclass(frozen=True, slots=True)
class LengthAwareOptions:
    """Switches and knobs of :class:`~dopd.control.routing.length_aware.LengthAwareRouter`.

    - ``ttft``: place prefill on the instance predicted to prefill its queue plus the new
      prompt soonest (the step in progress, the queued work in budget-sized steps next to its
      decodes, the prompt, its KV hand-off); off: ``least-loaded``'s placement. Either way,
      bypass and admission use the prompt's own predicted TTFT (the work ahead of it in the
      queue order, and the wait for decode memory).
    - ``order``: prefill queue order of every instance, ``short-first`` (with aging) or
      ``fcfs``; ``aging_s`` is the wait after which a prompt goes first (``None``: 5 x the TTFT
      SLO, or 10 s without one: a prompt that late has missed its SLO, so aging it earlier
      only makes prompts that can still meet theirs wait); ``max_passes`` is the most later
      arrivals that may overtake a prompt.
    - ``lane``: keep long prompts on a lane of prefill instances while recent prompt lengths
      are heavy-tailed (p99 / p50 >= ``lane_ratio`` over the last ``lane_window`` arrivals);
      prompts at or above the ``lane_quantile`` of that window are long; the lane gets the
      share of prefill instances that long prompts take of the prefill time (at least one,
      never all). Short prompts may still use the lane's instances. The default ratio opens
      the lane for bimodal tails (long prompts tens of times the median) where it measured a
      clear gain for short prompts; on Mooncake's smoother tail (p99 / p50 about 11) it cost
      attainment, so it stays closed there.
    - ``decode``: among the decode instances with room for the prompt now, prefer those that
      hold the lifetime KV footprint (ISL + the request's expected OSL, plus everything placed
      there) and then the smallest predicted step time after admission; off: ``pd-pair``'s
      placement.
    - ``bypass``: a prompt (of at most ``bypass_tokens``; ``None``: any length) may prefill on a
      decode instance when it fits that instance's next step, the step carrying it and the
      decode step after it stay within the TPOT SLO, its KV fits for its whole life, and that
      is predicted to give an earlier first token. Under a loose TPOT SLO the decode side has
      idle step time, and this lends it to the prefill side prompt by prompt; limited to
      512-token prompts, dopd's attainment over the paper suite's scenarios at 1, 1.25 and
      1.5x their comparison loads averages 3.0 points lower (``benchmarks/bench_paper_grid.py``).
    - ``admit``: at arrival, reject a request whose best predicted TTFT exceeds ``admit_k``
      times the TTFT SLO (it would miss it, and serving it delays the requests that can still
      meet theirs); ``admit_k`` 1.5 averages 3.3 points lower on the same grid. Rejected are
      only requests predicted to miss ``admit_k`` x the SLO by ``idle_margin`` even on an
      idle instance (they cannot make it), and the others only while no instance of the pool
      is idle; while one is idle, the request goes there (a decode instance prefills it in
      place). ``pool_k`` (default ``auto``: off) also admits them while the prefill backlog,
      shared evenly, would not delay them past ``pool_k`` x the limit (1 x under a sustained
      backlog): no wrong rejection at light load on the long-context case, but 8-20 % less max
      goodput for dopd on the paper suite's code-8b and mooncake-8b (2 and 1 alike), so off.
    """

    ttft: bool = True
    order: str = "short-first"
    aging_s: float | None = None
    max_passes: int = 64
    lane: bool = True
    lane_ratio: float = 16.0
    lane_quantile: float = 0.9
    lane_window: int = 1000
    decode: bool = True
    bypass: bool = True
    bypass_tokens: int | None = None
    admit: bool = True
    admit_k: float = 1.0
    idle_margin: float = 0.1
    pool_k: float | None = None

    def __post_init__(self) -> None:
        require(self.order in ORDERS,
                f"length-aware: order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        require(self.aging_s is None or (self.aging_s > 0 and not math.isnan(self.aging_s)),
                f"length-aware: aging_s must be > 0 s, got {self.aging_s}")
        require(self.max_passes >= 0, f"length-aware: max_passes must be >= 0, got "
                f"{self.max_passes}")
        require(self.lane_ratio >= 1 and math.isfinite(self.lane_ratio),
                f"length-aware: lane_ratio must be >= 1, got {self.lane_ratio}")
        require(0 < self.lane_quantile < 1,
                f"length-aware: lane_quantile must be in (0, 1), got {self.lane_quantile}")
        require(self.lane_window >= 100,
                f"length-aware: lane_window must be >= 100 prompts, got {self.lane_window}")
        require(self.bypass_tokens is None or self.bypass_tokens >= 1,
                f"length-aware: bypass_tokens must be >= 1, got {self.bypass_tokens}")
        require(self.admit_k >= 1 and math.isfinite(self.admit_k),
                f"length-aware: admit_k must be >= 1, got {self.admit_k}")
        require(self.pool_k is None or (self.pool_k >= 1 and math.isfinite(self.pool_k)),
                f"length-aware: pool_k must be >= 1, got {self.pool_k}")
        require(self.idle_margin >= 0 and math.isfinite(self.idle_margin),
                f"length-aware: idle_margin must be >= 0, got {self.idle_margin}")

    @property
    def needs_slo(self) -> bool:
        return self.bypass or self.admit


def _parse_bool(key: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in ("on", "true", "yes", "1"):
        return True
    if lowered in ("off", "false", "no", "0"):
        return False
    raise DopdError(f"length-aware: {key} must be on or off, got {text!r}")


def _convert(key: str, annotation: Any, text: str) -> Any:
    if annotation is bool:
        return _parse_bool(key, text)
    if annotation is str:
        return text
    optional = typing.get_origin(annotation) is not None and type(None) in typing.get_args(
        annotation)
    if optional and text.lower() in ("auto", "none"):
        return None
    number = float if float in (annotation, *typing.get_args(annotation)) else int
    try:
        return number(text)
    except ValueError:
        raise DopdError(f"length-aware: {key} must be a number, got {text!r}") from None


def parse_options(text: str) -> LengthAwareOptions:
    """Options from the text after ``length-aware:`` (``""``: all defaults); DopdError names an
    unknown key or a bad value."""
    if not text.strip():
        return LengthAwareOptions()
    _, params = split_spec("length-aware:" + text)
    hints = typing.get_type_hints(LengthAwareOptions)
    known = [f.name for f in dataclasses.fields(LengthAwareOptions)]
    kwargs: dict[str, Any] = {}
    for key, value in params.items():
        require(key in hints, f"length-aware: unknown option {key!r} (known: {', '.join(known)})")
        kwargs[key] = _convert(key, hints[key], value)
    return LengthAwareOptions(**kwargs)
