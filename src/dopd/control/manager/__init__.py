"""The P/D manager: target splits -> role switches and scaling, with hysteresis, dwell time,
bounded changes, an SLO fast path, drains, and a decision log (see :mod:`.core`)."""

from dopd.control.manager.core import Alarm, Decision, ManagerConfig, PDManager
from dopd.control.manager.decisions import DecisionLog, clean, to_jsonl, write_jsonl
from dopd.control.manager.split import (
    ROLES,
    Split,
    active_split,
    cheapest,
    committed_split,
    in_transition,
    move_cost,
)

__all__ = [
    "ROLES",
    "Alarm",
    "Decision",
    "DecisionLog",
    "ManagerConfig",
    "PDManager",
    "Split",
    "active_split",
    "cheapest",
    "clean",
    "committed_split",
    "in_transition",
    "move_cost",
    "to_jsonl",
    "write_jsonl",
]
