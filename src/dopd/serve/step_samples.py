"""Observed engine steps, carried from a worker to the front end's calibrator.

After every engine step that ran a batch, a worker records a :class:`StepSample`: the batch sums
that :meth:`~dopd.control.calibration.CalibratedLatency.observe_step` predicts a step from, and
the step's measured wall time. A :class:`StepBuffer` keeps the samples not yet sent, at most
``capacity`` (the oldest are dropped and counted), and hands out at most ``MAX_PER_MESSAGE`` at
a time, so every message stays small.

Wire form (the ``steps`` key of a worker's ``out`` and ``stats`` events, see
:mod:`dopd.serve.channels`): ``{"v": WIRE_VERSION, "rows": [[prefill_new_tokens,
prefill_attn_sum, prefill_count, decode_count, decode_ctx_sum, seconds], ...], "dropped": N}``,
where ``dropped`` counts the samples lost to the bound since the previous message.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from dopd.engine.plan import StepPlan
from dopd.errors import DopdError, require

WIRE_VERSION = 1
MAX_PER_MESSAGE = 64
CAPACITY = 512


@dataclass(frozen=True, slots=True)
class StepSample:
    """One engine step: its batch sums (those of :class:`~dopd.engine.plan.StepPlan`) and the
    seconds it took on the wall clock."""

    prefill_new_tokens: int
    prefill_attn_sum: int
    prefill_count: int
    decode_count: int
    decode_ctx_sum: int
    seconds: float

    @classmethod
    def of_plan(cls, plan: StepPlan, seconds: float) -> StepSample:
        return cls(plan.prefill_new_tokens, plan.prefill_attn_sum, plan.prefill_count,
                   plan.decode_count, plan.decode_ctx_sum, seconds)

    @property
    def kind(self) -> str:
        """``prefill`` for a step with a prefill chunk, else ``decode`` (the calibrator's)."""
        return "prefill" if self.prefill_count else "decode"


class StepBuffer:
    """The samples a worker has not sent yet (bounded; see the module docstring)."""

    __slots__ = ("_rows", "dropped")

    def __init__(self, capacity: int = CAPACITY) -> None:
        require(capacity >= 1, f"step buffer capacity must be >= 1, got {capacity}")
        self._rows: deque[StepSample] = deque(maxlen=capacity)
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._rows)

    def record(self, sample: StepSample) -> None:
        """Keep ``sample``; when full, the oldest unsent sample is dropped and counted."""
        if len(self._rows) == self._rows.maxlen:
            self.dropped += 1
        self._rows.append(sample)

    def drain(self, limit: int = MAX_PER_MESSAGE) -> dict[str, Any] | None:
        """The wire form of the oldest ``limit`` samples (removed from the buffer) and of the
        drops since the last drain; None when there is nothing to report."""
        if not self._rows and not self.dropped:
            return None
        rows = []
        while self._rows and len(rows) < limit:
            s = self._rows.popleft()
            rows.append([s.prefill_new_tokens, s.prefill_attn_sum, s.prefill_count,
                         s.decode_count, s.decode_ctx_sum, s.seconds])
        wire = {"v": WIRE_VERSION, "rows": rows, "dropped": self.dropped}
        self.dropped = 0
        return wire


def samples_from_wire(obj: Any) -> tuple[list[StepSample], int]:
    """(samples, dropped) of a :meth:`StepBuffer.drain` message; DopdError when it is not one
    of this version."""
    if not isinstance(obj, dict) or obj.get("v") != WIRE_VERSION:
        raise DopdError(f"step samples: expected version {WIRE_VERSION}, got "
                        f"{obj.get('v') if isinstance(obj, dict) else type(obj).__name__}")
    rows, dropped = obj.get("rows"), obj.get("dropped", 0)
    if not isinstance(rows, list) or not isinstance(dropped, int) or dropped < 0:
        raise DopdError("step samples: malformed rows or drop count")
    samples = []
    for row in rows:
        if (not isinstance(row, list | tuple) or len(row) != 6
                or not all(isinstance(v, int) and v >= 0 for v in row[:5])
                or not isinstance(row[5], int | float) or not math.isfinite(row[5])):
            raise DopdError(f"step samples: malformed row {row!r}")
        samples.append(StepSample(*row[:5], float(row[5])))
    return samples, dropped
