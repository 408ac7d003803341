"""Instance counts by role, and which instance is cheapest to move.

A :class:`Split` is a number of prefill, decode and mixed instances. The *committed* split of a
cluster counts every instance by the role it has or is heading to: an ACTIVE or STARTING
instance by its role, a DRAINING or SWITCHING one by its target role (an instance draining
to stop counts nowhere). Acting on the committed split rather than the ACTIVE one means a
switch in progress is never ordered twice.

The cost of moving an instance is the work it must finish before its drain completes:
queued prompt tokens and KV still held for hand-offs on the prefill side, running decodes
(their KV) on the decode side. The cheapest is the one with the least.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dopd.control.policies.base import ClusterView, InstanceView
from dopd.errors import require
from dopd.types import InstanceState, Role

ROLES: tuple[Role, ...] = (Role.PREFILL, Role.DECODE, Role.MIXED)
BLOCK_TOKENS = 16
"""Tokens per KV block assumed when ranking move costs (only the order matters)."""


@dataclass(frozen=True, slots=True)
class Split:
    """Instance counts by role (all >= 0)."""

    prefill: int
    decode: int
    mixed: int = 0

    def __post_init__(self) -> None:
        require(min(self.prefill, self.decode, self.mixed) >= 0,
                f"instance counts must be >= 0, got {self.prefill}:{self.decode}:{self.mixed}")

    @property
    def total(self) -> int:
        return self.prefill + self.decode + self.mixed

    def count(self, role: Role) -> int:
        """The count of ``role``."""
        return {Role.PREFILL: self.prefill, Role.DECODE: self.decode, Role.MIXED: self.mixed}[role]

    def delta(self, other: Split) -> dict[Role, int]:
        """``self - other`` per role."""
        return {r: self.count(r) - other.count(r) for r in ROLES}

    def moves_to(self, other: Split) -> int:
        """Instances that must change (role switches when the totals are equal; else also the
        instances added or removed)."""
        d = other.delta(self)
        return max(sum(v for v in d.values() if v > 0), -sum(v for v in d.values() if v < 0))

    def as_dict(self) -> dict[str, int]:
        return {"prefill": self.prefill, "decode": self.decode, "mixed": self.mixed}

    def __str__(self) -> str:
        base = f"{self.prefill}P:{self.decode}D"
        return base + (f":{self.mixed}M" if self.mixed else "")

    @staticmethod
    def of(counts: dict[Role, int]) -> Split:
        return Split(counts.get(Role.PREFILL, 0), counts.get(Role.DECODE, 0),
                     counts.get(Role.MIXED, 0))


def heading(view: InstanceView) -> Role | None:
    """The role ``view`` has or is heading to; None when it is stopped or draining to stop."""
    if view.state == InstanceState.STOPPED:
        return None
    if view.state in (InstanceState.DRAINING, InstanceState.SWITCHING):
        return view.target_role
    return view.role


def committed_split(view: ClusterView) -> Split:
    """Counts by the role each live instance has or is heading to (see the module doc)."""
    counts = dict.fromkeys(ROLES, 0)
    for inst in view.instances:
        role = heading(inst)
        if role is not None:
            counts[role] += 1
    return Split.of(counts)


def active_split(view: ClusterView) -> Split:
    """Counts of ACTIVE instances by role (what serves traffic right now)."""
    return Split.of({r: view.count(r) for r in ROLES})


def in_transition(view: ClusterView) -> int:
    """Instances draining, switching or starting."""
    moving = (InstanceState.DRAINING, InstanceState.SWITCHING, InstanceState.STARTING)
    return sum(1 for v in view.instances if v.state in moving)


def move_cost(view: InstanceView) -> tuple[int, int, int]:
    """Work ``view`` must finish before a drain completes (smaller is cheaper), as (tokens,
    running decodes, id). Tokens are its queued prompt tokens plus the tokens its KV holds
    (on a prefill instance, prompts waiting for their hand-off; on a decode instance, the
    context of running decodes, a proxy of how long they still run)."""
    tokens = view.queued_prefill_tokens + view.kv_used_blocks * BLOCK_TOKENS
    return tokens, view.decode_batch, view.instance_id


def cheapest(candidates: Iterable[InstanceView]) -> InstanceView | None:
    """The candidate with the least :func:`move_cost` (ties: lowest id); None if empty."""
    best = None
    best_cost: tuple[int, int, int] | None = None
    for inst in candidates:
        cost = move_cost(inst)
        if best_cost is None or cost < best_cost:
            best, best_cost = inst, cost
    return best
