"""The P/D manager: turns target instance counts into role switches, additions and removals.

Rules, in the order :meth:`PDManager.step` applies them:

- It compares the target with the *committed* split (:func:`~.split.committed_split`), so work
  already ordered is not ordered twice.
- Hysteresis: a change acts only once the target has pointed the same way for ``confirm``
  consecutive decisions, or at once when it is ``margin`` or more moves away. Moving back
  against the last move within ``reverse_window_s`` needs ``reverse_confirm`` decisions, which
  is what stops oscillation.
- Fast path: an :class:`Alarm` (a side missing its SLO) acts at once when the target moves
  capacity towards the side that is short, with up to ``alarm_changes`` moves. It
  bypasses the hysteresis, never the drain, and never reverses a recent move.
- Bounds: at most ``max_changes`` moves per decision and ``max_in_flight`` instances
  draining, switching or starting at once; an instance that finished a transition less than
  ``dwell_s`` ago does not move; a move never leaves a phase without an ACTIVE instance.
- Mode changes (``mode_changes`` > 0): a move between all-MIXED and a P/D split (the hybrid
  policy's own hysteresis has confirmed it) acts at once with up to ``mode_changes`` moves
  and instances in flight; ``migrate_mixed``: MIXED instances become DECODE in place (no
  drain, not counted in the bound) before others become PREFILL, moving their decodes' KV
  instead of finishing them.
- Switch budget (``switch_rate_h`` finite): role switches spend tokens of a bucket that holds
  ``switch_burst`` moves (default: one per instance of the pool) and refills at
  ``switch_rate_h`` moves per instance-hour; with the bucket empty nothing moves, alarms and
  mode changes included. Whatever the solver and the signals do, a pool of N instances makes
  at most ``burst + switch_rate_h x N x hours`` switches: after the first settling, a steady
  load costs at most ``switch_rate_h`` switches per instance-hour.
- The instance moved is the cheapest to drain (:func:`~.split.cheapest`).
- Every switch and removal drains through the cluster (SwitchRole / RemoveInstance): in-flight
  work finishes first, or (``migrate=True``, switches of decode-capable instances) decodes move
  their KV to other decode instances; no request is lost either way.
- Elastic pools (``elastic=True``): missing instances are added (cold start) while the budget
  allows; surplus ones (what role switches do not absorb) are removed once a surplus has been
  seen for ``scale_in_confirm`` consecutive decisions, and only when ``can_remove(role)`` says
  the survivors can absorb the load.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from dopd.control.manager.split import (
    ROLES,
    Split,
    cheapest,
    committed_split,
    in_transition,
)
from dopd.control.policies.base import (
    Action,
    AddInstance,
    ClusterView,
    InstanceView,
    RemoveInstance,
    SwitchRole,
)
from dopd.errors import require
from dopd.types import InstanceState, Role


@dataclass(frozen=True, slots=True)
class ManagerConfig:
    """Knobs of :class:`PDManager` (see the module doc)."""

    confirm: int = 2
    margin: int = 2
    reverse_confirm: int = 4
    reverse_window_s: float = 60.0
    dwell_s: float = 20.0
    max_changes: int = 1
    alarm_changes: int = 2
    max_in_flight: int = 2
    switch: bool = True
    elastic: bool = False
    scale_in_confirm: int = 6
    migrate: bool = False
    mode_changes: int = 0
    migrate_mixed: bool = False
    switch_rate_h: float = math.inf
    switch_burst: float | None = None

    def __post_init__(self) -> None:
        require(self.confirm >= 1 and self.reverse_confirm >= 1 and self.scale_in_confirm >= 1,
                "manager confirmations must be >= 1")
        require(self.margin >= 1, f"manager margin must be >= 1, got {self.margin}")
        require(self.dwell_s >= 0 and self.reverse_window_s >= 0,
                "manager dwell and reverse window must be >= 0 s")
        require(self.max_changes >= 1 and self.alarm_changes >= 1,
                "manager change bounds must be >= 1")
        require(self.max_in_flight >= 1, f"max in flight must be >= 1, got {self.max_in_flight}")
        require(self.switch or self.elastic, "a manager must switch roles or scale (or both)")
        require(self.mode_changes >= 0, f"mode changes must be >= 0, got {self.mode_changes}")
        require(self.switch_rate_h > 0, f"switch rate must be > 0 per instance-hour, got "
                f"{self.switch_rate_h}")
        require(self.switch_burst is None or self.switch_burst >= 1,
                f"switch burst must be >= 1 move, got {self.switch_burst}")


@dataclass(frozen=True, slots=True)
class Alarm:
    """Which side is short now (its SLO is being missed), and why.

    ``prefill``: prompts queue longer than the TTFT SLO allows; ``decode``: decode steps exceed
    the TPOT SLO, or prefilled requests wait for decode memory (which delays their first token).
    """

    prefill: bool = False
    decode: bool = False
    detail: str = ""

    @property
    def active(self) -> bool:
        return self.prefill or self.decode

    def relieved_by(self, delta: dict[Role, int]) -> bool:
        """Whether a change of counts ``delta`` adds capacity to a side that is short without
        taking any from another side that is short."""
        gain_p = delta[Role.PREFILL] > 0 or delta[Role.MIXED] > 0
        gain_d = delta[Role.DECODE] > 0 or delta[Role.MIXED] > 0
        loss_p = delta[Role.PREFILL] < 0 or delta[Role.MIXED] < 0
        loss_d = delta[Role.DECODE] < 0 or delta[Role.MIXED] < 0
        if self.prefill and self.decode:
            return (gain_p and not loss_p) or (gain_d and not loss_d)
        return (self.prefill and gain_p) or (self.decode and gain_d)


@dataclass(frozen=True, slots=True)
class Decision:
    """What one :meth:`PDManager.step` did: the actions, why, and the split it started from."""

    actions: tuple[Action, ...]
    reason: str
    current: Split
    target: Split
    fast: bool = False


def _mode_change(current: Split, target: Split) -> bool:
    """Whether ``current -> target`` is a move between all-MIXED and a P/D split (either way,
    including the rest of such a move under way): a change of operating mode, not of ratio."""
    all_now, all_next = current.mixed == current.total, target.mixed == target.total
    return all_now != all_next or (target.mixed == 0 and current.mixed > 0)


def _direction(delta: dict[Role, int]) -> tuple[int, ...]:
    return tuple((v > 0) - (v < 0) for v in (delta[r] for r in ROLES))


@dataclass
class _State:
    direction: tuple[int, ...] | None = None
    streak: int = 0
    shrink_streak: int = 0
    last_move: tuple[int, ...] | None = None
    last_move_s: float = -math.inf
    settled_at: dict[int, float] = field(default_factory=dict)
    tokens: float | None = None
    tokens_at: float = 0.0


class PDManager:
    """Stateful executor of target splits for one cluster (see the module doc).

    Call :meth:`track` on every tick (it notes when instances finish their transitions, for
    the dwell time) and :meth:`step` whenever a new target is known.
    """

    def __init__(self, config: ManagerConfig = ManagerConfig()) -> None:
        self.config = config
        self._s = _State()

    def track(self, now: float, view: ClusterView) -> None:
        """Note instances that are not ACTIVE now: their dwell time restarts."""
        settled = self._s.settled_at
        for inst in view.instances:
            if inst.state != InstanceState.ACTIVE:
                settled[inst.instance_id] = now

    def _movable(self, now: float, view: ClusterView, role: Role) -> list[InstanceView]:
        dwell = self.config.dwell_s
        settled = self._s.settled_at
        return [v for v in view.instances
                if v.state == InstanceState.ACTIVE and v.role == role
                and now - settled.get(v.instance_id, -math.inf) >= dwell]

    def step(self, now: float, view: ClusterView, target: Split, alarm: Alarm | None = None,
             can_remove: Callable[[Role], bool] | None = None, *,
             confirming: bool = True) -> Decision:
        """Actions that move the cluster towards ``target`` now (possibly none).

        A call with ``confirming=False`` (an alarm between decisions) does not count towards
        the confirmation of a change: it acts only on the fast path.
        """
        self.track(now, view)
        cfg, s = self.config, self._s
        current = committed_split(view)
        if not cfg.elastic:
            require(target.total == current.total or target.total == view.budget,
                    f"target {target} does not fit the fixed pool of {current.total}")
        delta = target.delta(current)

        def hold(reason: str) -> Decision:
            return Decision((), reason, current, target)

        if target == current:
            if confirming:
                s.direction, s.streak, s.shrink_streak = None, 0, 0
            return hold(f"on target {target}")
        direction = _direction(delta)
        reversing = (s.last_move is not None and now - s.last_move_s < cfg.reverse_window_s
                     and all(a == -b for a, b in zip(direction, s.last_move, strict=True)))
        # The fast path never reverses a recent move: alarms on both sides would flip-flop.
        fast = (alarm is not None and alarm.active and alarm.relieved_by(delta)
                and not reversing)
        if confirming:
            s.streak = s.streak + 1 if direction == s.direction else 1
            s.direction = direction
            s.shrink_streak = s.shrink_streak + 1 if min(delta.values()) < 0 else 0
        elif not fast:
            return hold(f"{current} -> {target}: alarm does not call for it")
        need = cfg.reverse_confirm if reversing else cfg.confirm
        distance = current.moves_to(target)
        mode = cfg.mode_changes > 0 and _mode_change(current, target)
        if fast or mode or (distance >= cfg.margin and not reversing):
            need = 1
        if s.streak < need:
            kind = "reversal" if reversing else "change"
            return hold(f"{kind} {current} -> {target} confirming {s.streak}/{need}")
        moving = in_transition(view)
        room = (max(cfg.max_in_flight, cfg.mode_changes) if mode else cfg.max_in_flight) - moving
        if room <= 0:
            return hold(f"{moving} instance(s) in transition (max {cfg.max_in_flight})")
        limit = min(cfg.mode_changes if mode else cfg.alarm_changes if fast
                    else cfg.max_changes, room)
        tokens = self._refill(now, view)
        if tokens < 1.0:
            return hold(f"{current} -> {target}: switch budget spent ({cfg.switch_rate_h:g} "
                        f"moves per instance-hour)")
        actions = self._plan(now, view, delta,
                             limit if math.isinf(tokens) else min(limit, int(tokens)),
                             can_remove)
        if not actions:
            return hold(f"{current} -> {target}: no instance may move now (dwell or last of a "
                        f"phase)")
        if not math.isinf(tokens):
            s.tokens = tokens - sum(1 for a in actions if isinstance(a, SwitchRole))
        s.last_move, s.last_move_s = direction, now
        s.streak = 0
        why = f"{current} -> {target}" + (f" fast path: {alarm.detail}" if fast and alarm else "")
        return Decision(tuple(actions), why, current, target, fast)

    def _refill(self, now: float, view: ClusterView) -> float:
        """Tokens of the switch budget at ``now`` (inf without a budget)."""
        cfg, s = self.config, self._s
        if math.isinf(cfg.switch_rate_h):
            return math.inf
        size = max(view.budget, len(view.instances), 1)
        burst = float(size) if cfg.switch_burst is None else cfg.switch_burst
        if s.tokens is None:
            s.tokens, s.tokens_at = burst, now
        s.tokens = min(burst, s.tokens + (now - s.tokens_at) * cfg.switch_rate_h * size / 3600.0)
        s.tokens_at = now
        return s.tokens

    def _plan(self, now: float, view: ClusterView, delta: dict[Role, int], limit: int,
              can_remove: Callable[[Role], bool] | None) -> list[Action]:
        cfg = self.config
        d = dict(delta)
        actions: list[Action] = []
        serving = {r: sum(1 for v in view.instances
                          if v.state == InstanceState.ACTIVE and v.role == r) for r in ROLES}
        taken: set[int] = set()

        def keeps_phases(role: Role) -> bool:
            # After losing one ACTIVE instance of `role`, both phases still have a server.
            left = dict(serving)
            left[role] -= 1
            return (left[Role.PREFILL] + left[Role.MIXED] >= 1
                    and left[Role.DECODE] + left[Role.MIXED] >= 1)

        def pick(role: Role) -> int | None:
            if not keeps_phases(role):
                return None
            inst = cheapest(v for v in self._movable(now, view, role)
                            if v.instance_id not in taken)
            return None if inst is None else inst.instance_id

        if cfg.switch:
            free = 0  # in-place switches (no drain) do not count against the limit
            for src in ROLES:
                # MIXED instances become DECODE first: in place, they keep their decodes,
                # which are then the room the MIXED -> PREFILL ones migrate theirs to.
                dsts = (Role.DECODE, Role.PREFILL, Role.MIXED) \
                    if src == Role.MIXED and cfg.migrate_mixed else ROLES
                for dst in dsts:
                    while len(actions) - free < limit and d[src] < 0 and d[dst] > 0:
                        iid = pick(src)
                        if iid is None:
                            break
                        in_place = cfg.migrate_mixed and src == Role.MIXED and dst == Role.DECODE
                        migrate = (cfg.migrate and src != Role.PREFILL) \
                            or (cfg.migrate_mixed and src == Role.MIXED)
                        actions.append(SwitchRole(iid, dst, f"{src.value} -> {dst.value}",
                                                  migrate=migrate, in_place=in_place))
                        free += in_place
                        taken.add(iid)
                        serving[src] -= 1
                        d[src] += 1
                        d[dst] -= 1
        if cfg.elastic:
            alive = len(view.alive())
            for role in ROLES:
                while len(actions) < limit and d[role] > 0 and alive < view.budget:
                    actions.append(AddInstance(role, f"scale out {role.value}"))
                    alive += 1
                    d[role] -= 1
            if self._s.shrink_streak >= cfg.scale_in_confirm:
                for role in ROLES:
                    while len(actions) < limit and d[role] < 0:
                        if can_remove is not None and not can_remove(role):
                            break
                        iid = pick(role)
                        if iid is None:
                            break
                        actions.append(RemoveInstance(iid, f"scale in {role.value}"))
                        taken.add(iid)
                        serving[role] -= 1
                        d[role] += 1
        return actions
