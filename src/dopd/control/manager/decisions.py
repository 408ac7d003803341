"""The controller's decision log: one JSON-ready record per control decision.

A record holds the time, what was observed, the forecast, the target split and the split the
cluster was committed to, the actions taken (possibly none), the reason (the controller's
trace), ``why`` (the same for people: forecast and predicted latency against the SLO, see
:mod:`.explain`; absent when the policy gives none), and the latency the plan predicted for the
target split (``predicted``) and for the committed one (``predicted_current``). The latency
observed over the interval that followed is filled in later (:meth:`DecisionLog.settle`), so
each record compares prediction with outcome. Values are cleaned for JSON on the way in:
non-finite floats become None, enums their values, tuples lists. Records are plain dicts, so a
run's result can carry them and ``dopd simulate --out`` writes them as JSON lines.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from dopd.control.policies.base import Action


def clean(value: Any) -> Any:
    """``value`` made JSON-ready (see the module doc)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: clean(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "item"):  # numpy scalar
        return clean(value.item())
    return str(value)


def action_record(action: Action) -> dict[str, Any]:
    """One action as a dict: its kind and its fields."""
    fields = {f.name: clean(getattr(action, f.name)) for f in dataclasses.fields(action)}
    return {"action": type(action).__name__, **fields}


class DecisionLog:
    """Append-only list of decision records (dicts) of one controller.

    ``records`` is the list itself (shared, not copied), so a caller may hand it on. Records
    with a prediction wait for :meth:`settle` to add what was observed next.
    """

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.records: list[dict[str, Any]] = []
        self._unsettled: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.records)

    def add(
        self,
        t: float,
        *,
        reason: str,
        actions: Sequence[Action] = (),
        target: Any = None,
        current: Any = None,
        observation: Mapping[str, Any] | None = None,
        forecast: Any = None,
        predicted: Mapping[str, Any] | None = None,
        predicted_current: Mapping[str, Any] | None = None,
        why: str | None = None,
    ) -> dict[str, Any]:
        """Append one record and return it (``why`` and ``predicted_current`` are only
        recorded when given)."""
        record: dict[str, Any] = {
            "t": float(t),
            "kind": "decision",
            "policy": self.policy,
            "actions": [action_record(a) for a in actions],
            "reason": reason,
            "target": clean(target),
            "current": clean(current),
            "observation": clean(observation or {}),
            "forecast": clean(forecast),
            "predicted": clean(predicted) if predicted is not None else None,
            "observed": None,
        }
        if predicted_current is not None:
            record["predicted_current"] = clean(predicted_current)
        if why is not None:
            record["why"] = why
        self.records.append(record)
        if predicted is not None:
            self._unsettled.append(record)
        return record

    def settle(self, t: float, observed: Mapping[str, Any]) -> int:
        """Attach ``observed`` (measured up to time ``t``) to every earlier record still
        waiting for it; returns how many were settled."""
        done = [r for r in self._unsettled if r["t"] < t]
        if not done:
            return 0
        value = {"t": float(t), **clean(observed)}
        for record in done:
            record["observed"] = value
        self._unsettled = [r for r in self._unsettled if r["t"] >= t]
        return len(done)

    def action_count(self) -> int:
        """Actions taken over all records."""
        return sum(len(r["actions"]) for r in self.records)


def to_jsonl(records: Iterable[Mapping[str, Any]]) -> str:
    """Records as JSON lines (one compact object per line, newline-terminated)."""
    return "".join(json.dumps(clean(r), separators=(",", ":"), sort_keys=False) + "\n"
                   for r in records)


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``records`` as JSON lines to ``path`` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_jsonl(records))
    return path
