"""What the cluster policies observe beyond the arrival monitor, and their spec options.

- :class:`OutcomeWindow`: TTFT/TPOT percentiles and SLO attainment of recently finished
  requests (the lagging, ground-truth signal);
- :func:`pressure`: instantaneous signals of the cluster view (no lag): the wait a new prompt
  would see on the least-loaded prefill instance, decode step times against the TPOT SLO, and
  hand-offs waiting for decode memory (which, in dopd's engines, delay the first token);
- :func:`parse_options`: ``name:flag:key=value`` spec arguments.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from dopd.control.manager import Alarm
from dopd.control.policies.base import ClusterView
from dopd.errors import require
from dopd.types import SLO, InstanceState, RequestOutcome, RequestState, Role


def parse_options(policy: str, args: str, flags: set[str], keys: set[str]
                  ) -> tuple[set[str], dict[str, str]]:
    """Split ``args`` (``flag:key=value:...``) into flags and key/values; DopdError on anything
    not in ``flags`` / ``keys``."""
    got_flags: set[str] = set()
    values: dict[str, str] = {}
    for raw in args.split(":"):
        item = raw.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if eq:
            require(key in keys, f"policy {policy} has no option {key!r} (options: "
                    f"{', '.join(sorted(flags | {k + '=' for k in keys}))})")
            require(key not in values, f"policy {policy}: option {key!r} given twice")
            values[key] = value.strip()
        else:
            require(key in flags, f"policy {policy} has no option {key!r} (options: "
                    f"{', '.join(sorted(flags | {k + '=' for k in keys}))})")
            got_flags.add(key)
    return got_flags, values


def option_float(policy: str, values: dict[str, str], key: str, default: float,
                 low: float = 0.0) -> float:
    """``values[key]`` as a float > ``low`` (``default`` when absent); DopdError if bad."""
    if key not in values:
        return default
    try:
        value = float(values[key])
    except ValueError:
        value = math.nan
    require(math.isfinite(value) and value > low,
            f"policy {policy}: option {key} must be a number > {low:g}, got {values[key]!r}")
    return value


def option_on_off(policy: str, values: dict[str, str], key: str, default: bool) -> bool:
    """``values[key]`` as ``on`` (True) or ``off`` (``default`` when absent); DopdError if
    bad."""
    if key not in values:
        return default
    text = values[key].lower()
    require(text in ("on", "off"), f"policy {policy}: {key} must be on or off, got {text!r}")
    return text == "on"


def option_int(policy: str, values: dict[str, str], key: str, default: int, low: int = 1) -> int:
    """``values[key]`` as an int >= ``low`` (``default`` when absent); DopdError if bad."""
    if key not in values:
        return default
    text = values[key]
    require(text.isdigit() and int(text) >= low,
            f"policy {policy}: option {key} must be an integer >= {low}, got {text!r}")
    return int(text)


@dataclass(frozen=True, slots=True)
class Observed:
    """Latency of the requests that finished in a window (None when there were none)."""

    finished: int
    ttft_p90: float | None
    tpot_p90: float | None
    attainment: float | None


class OutcomeWindow:
    """TTFT/TPOT and SLO attainment of the requests that ended in the last ``window_s``."""

    def __init__(self, window_s: float, slo: SLO | None) -> None:
        require(window_s > 0, f"outcome window must be > 0 s, got {window_s}")
        self.window_s = window_s
        self.slo = slo
        # (end time, ttft or nan, tpot or nan, met)
        self._items: deque[tuple[float, float, float, bool]] = deque()

    def observe(self, now: float, outcome: RequestOutcome) -> None:
        ttft, tpot = outcome.ttft_s, outcome.tpot_s
        met = False
        if outcome.state == RequestState.FINISHED and ttft is not None and self.slo is not None:
            met = ttft <= self.slo.ttft_s and (tpot is None or tpot <= self.slo.tpot_s)
        self._items.append((now, math.nan if ttft is None else ttft,
                            math.nan if tpot is None else tpot, met))
        self._evict(now)

    def _evict(self, now: float) -> None:
        cutoff = now - self.window_s
        while self._items and self._items[0][0] <= cutoff:
            self._items.popleft()

    def summary(self, now: float, q: float = 0.9) -> Observed:
        """Percentile ``q`` of TTFT and TPOT and the share meeting the SLO in the window."""
        self._evict(now)
        if not self._items:
            return Observed(0, None, None, None)
        arr = np.array([(a, b, c) for _, a, b, c in self._items], dtype=np.float64)

        def pct(col: np.ndarray) -> float | None:
            col = col[np.isfinite(col)]
            return float(np.quantile(col, q)) if col.size else None

        att = float(arr[:, 2].mean()) if self.slo is not None else None
        return Observed(len(self._items), pct(arr[:, 0]), pct(arr[:, 1]), att)


@dataclass(frozen=True, slots=True)
class Pressure:
    """Instantaneous load signals of a cluster view.

    ``prefill_wait_s``: seconds of queued prompt work on the least-loaded ACTIVE instance that
    takes prompts (what a new arrival waits, at ``prefill_tokens_per_s``); ``decode_step_s``:
    the largest recent step time among ACTIVE decode instances; ``handoffs_waiting``: prefilled
    requests waiting for decode memory; ``decode_kv_use``: mean KV use of decode instances.
    """

    prefill_wait_s: float
    decode_step_s: float
    handoffs_waiting: int
    decode_kv_use: float
    queued_prefill_tokens: int
    decode_instances: int


def pressure(view: ClusterView, prefill_tokens_per_s: float) -> Pressure:
    """:class:`Pressure` of ``view`` (see there)."""
    active = [v for v in view.instances if v.state == InstanceState.ACTIVE]
    takes_prompts = [v for v in active if v.role != Role.DECODE]
    takes_decodes = [v for v in active if v.role != Role.PREFILL]
    waits = [v.queued_prefill_tokens / prefill_tokens_per_s for v in takes_prompts]
    steps = [v.recent_step_s for v in takes_decodes if v.role == Role.DECODE]
    handoffs = sum(v.pending_decodes for v in view.instances)
    kv = [v.kv_use for v in takes_decodes]
    return Pressure(
        prefill_wait_s=min(waits) if waits else math.inf,
        decode_step_s=max(steps) if steps else 0.0,
        handoffs_waiting=handoffs,
        decode_kv_use=float(np.mean(kv)) if kv else 0.0,
        queued_prefill_tokens=sum(v.queued_prefill_tokens for v in view.instances),
        decode_instances=len(takes_decodes),
    )


def slo_alarm(p: Pressure, observed: Observed, slo: SLO, wait_share: float = 0.5) -> Alarm:
    """Alarm when the SLO is being missed: the prefill side when even the least-loaded prefill
    instance holds more than ``wait_share`` of the TTFT SLO in queued work; the decode side when
    decode steps exceed the TPOT SLO or more prefilled requests wait for decode memory than there
    are decode instances. An observed TPOT P90 over its SLO is a decode alarm; an observed TTFT
    P90 over its SLO is a prefill alarm only when prompts do queue (a quarter of the SLO) and no
    hand-off waits for decode memory, which delays first tokens just as well."""
    prefill = p.prefill_wait_s > wait_share * slo.ttft_s
    decode = p.decode_step_s > slo.tpot_s or p.handoffs_waiting > max(p.decode_instances, 1)
    notes = []
    if prefill:
        notes.append(f"prefill queue {p.prefill_wait_s:.2f}s")
    if decode:
        notes.append(f"decode step {p.decode_step_s * 1e3:.0f}ms, "
                     f"{p.handoffs_waiting} hand-offs waiting")
    if observed.ttft_p90 is not None and observed.ttft_p90 > slo.ttft_s and not decode \
            and p.handoffs_waiting == 0 and p.prefill_wait_s > 0.25 * slo.ttft_s:
        prefill = True
        notes.append(f"observed TTFT p90 {observed.ttft_p90:.2f}s")
    if observed.tpot_p90 is not None and observed.tpot_p90 > slo.tpot_s:
        decode = True
        notes.append(f"observed TPOT p90 {observed.tpot_p90 * 1e3:.0f}ms")
    return Alarm(prefill, decode, "; ".join(notes))
