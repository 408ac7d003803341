"""Instance life cycle: which policy action applies how, and the state transitions.

States (:class:`~dopd.types.InstanceState`): a role switch goes ACTIVE -> DRAINING -> SWITCHING
-> ACTIVE in the new role; a removal goes ACTIVE -> DRAINING -> STOPPED; an added instance is
STARTING until its cold start ends. Both drivers carry these out with their own clock (simulated
events or asyncio tasks) and runner, but decide here:

- :func:`plan_action` checks a :data:`~dopd.control.policies.base.Action` against the cluster
  and returns a :class:`Plan` (or raises :class:`Refused`, with the reason both drivers report);
- a drain (:class:`Plan` with ``step`` DRAIN) gives the instance no new work, moves its
  prompts that have not started and its hand-offs still waiting for its memory to other
  instances (:data:`REROUTE_UNSTARTED`), lets everything in flight finish there, or, with
  ``migrate``, moves its decodes too (their KV goes to another decode instance: sent by the
  driver's KV transport, or recomputed there where the transport cannot export a running
  decode's KV);
- ``in_place`` (MIXED -> DECODE only) switches at once: prompts not started move, everything
  else stays;
- :func:`begin`, :func:`drained`, :func:`switched` and :func:`cancel` are the transitions;
- :func:`scheduler_config` is every instance's scheduler configuration under a policy (its
  per-role token budget), so a role change needs no message beyond the role.

Why a drain re-routes work that has not started (rather than letting it finish in place): the
switch was decided because the instance's new role is needed now, so the drain should be as
short as the work in flight; and a queued prompt starts sooner on an ACTIVE instance than
behind the draining instance's queue, so TTFT is lower on both counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol

from dopd.control.policies.base import (
    Action,
    AddInstance,
    ClusterPolicy,
    RemoveInstance,
    SwitchRole,
)
from dopd.engine.sequence import SchedulerConfig
from dopd.errors import DopdError
from dopd.types import InstanceState, Role

REROUTE_UNSTARTED = True
"""A drain moves the prompts that have not started to other instances (see the module
docstring for why); both drivers read it."""


class Member(Protocol):
    """An instance as the life cycle reads and changes it (a simulated instance, or the live
    front end's handle of a worker)."""

    instance_id: int
    role: Role
    state: InstanceState
    target_role: Role | None


class Refused(DopdError):
    """A policy action (or an admin's switch) that does not apply now; ``status`` is the HTTP
    status a live admin request gets (404: no such instance, 409: a conflict)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


class Step(StrEnum):
    IN_PLACE = "in_place"
    """Change the role at once (MIXED -> DECODE): prompts not started move elsewhere."""
    DRAIN = "drain"
    """Drain, then switch to ``role`` (or stop: ``role`` None)."""
    ADD = "add"
    """Start a new instance in ``role`` (cold start)."""


@dataclass(frozen=True, slots=True)
class Plan:
    """How to carry out one action: ``instance_id`` (None for ADD), the target ``role`` (None:
    the instance stops), ``migrate``: its decodes move to other decode instances."""

    step: Step
    instance_id: int | None
    role: Role | None
    migrate: bool = False

    @property
    def stops(self) -> bool:
        return self.step == Step.DRAIN and self.role is None


def _find(members: Iterable[Member], iid: int) -> Member:
    for m in members:
        if m.instance_id == iid:
            return m
    raise Refused(f"no instance {iid}", 404)


def plan_switch(members: Iterable[Member], iid: int, role: Role, *, migrate: bool = False,
                in_place: bool = False) -> Plan:
    """The plan of switching ``iid`` to ``role``; :class:`Refused` unless it is ACTIVE in
    another role and, when the switch drains it, another instance is ACTIVE (a drain of the
    last active instance would leave nothing to serve). ``migrate`` applies to
    decode-capable instances only; ``in_place`` to MIXED -> DECODE only (otherwise the switch
    drains)."""
    members = list(members)
    m = _find(members, iid)
    if m.state != InstanceState.ACTIVE:
        raise Refused(f"cannot switch instance {iid}: it is {m.state.value}, not active")
    if m.role == role:
        raise Refused(f"instance {iid} already has role {role.value}")
    if in_place and m.role == Role.MIXED and role == Role.DECODE:
        return Plan(Step.IN_PLACE, iid, role)
    if not any(o.instance_id != iid and o.state == InstanceState.ACTIVE for o in members):
        raise Refused(f"cannot switch instance {iid}: it is the last active one (its drain "
                      f"would leave no instance to serve)")
    return Plan(Step.DRAIN, iid, role, migrate and m.role != Role.PREFILL)


def plan_action(action: Action, members: Iterable[Member], budget: int,
                starting: int = 0) -> Plan:
    """The plan for a policy's ``action`` on the instances ``members`` (stopped ones
    included) with at most ``budget`` alive at once, ``starting`` more being started that are
    not yet listed; :class:`Refused` (a DopdError) when it does not apply now."""
    members = list(members)
    if isinstance(action, SwitchRole):
        return plan_switch(members, action.instance_id, action.role, migrate=action.migrate,
                           in_place=action.in_place)
    if isinstance(action, RemoveInstance):
        m = _find(members, action.instance_id)
        if m.state != InstanceState.ACTIVE:
            raise Refused(f"cannot remove instance {m.instance_id}: it is {m.state.value}")
        if not any(x.state == InstanceState.ACTIVE for x in members if x is not m):
            raise Refused(f"cannot remove instance {m.instance_id}: it is the last active one")
        return Plan(Step.DRAIN, m.instance_id, None)
    if isinstance(action, AddInstance):
        alive = sum(1 for x in members if x.state != InstanceState.STOPPED) + starting
        if alive >= budget:
            raise Refused(f"cannot add an instance: {alive} of at most {budget} are already alive")
        return Plan(Step.ADD, None, action.role)
    raise DopdError(f"unknown policy action {action!r}")


def begin(m: Member, plan: Plan) -> None:
    """Start ``plan`` on ``m``: an in-place switch takes the new role now; a drain makes it
    DRAINING with its target role (None: it stops afterwards)."""
    if plan.step == Step.IN_PLACE:
        assert plan.role is not None
        m.role = plan.role
    else:
        m.state = InstanceState.DRAINING
        m.target_role = plan.role


def drained(m: Member) -> InstanceState:
    """``m`` (DRAINING) holds no work any more: it becomes SWITCHING, or STOPPED when it has no
    target role; returns the new state."""
    m.state = InstanceState.SWITCHING if m.target_role is not None else InstanceState.STOPPED
    return m.state


def switched(m: Member) -> None:
    """``m``'s switch or cold start is over: ACTIVE, in its target role if it had one."""
    if m.state == InstanceState.SWITCHING and m.target_role is not None:
        m.role = m.target_role
    m.target_role = None
    m.state = InstanceState.ACTIVE


def cancel(m: Member, role: Role) -> None:
    """A drain or switch that failed (timed out): back to ACTIVE in ``role``, unless the
    instance was lost meanwhile (STOPPED stays)."""
    if m.state != InstanceState.STOPPED:
        m.state = InstanceState.ACTIVE
    m.target_role = None
    m.role = role


def scheduler_config(policy: ClusterPolicy, base: SchedulerConfig) -> SchedulerConfig:
    """``base`` (the cluster's and the router's settings) with ``policy``'s token budget of
    MIXED instances; the scheduler applies it whenever the instance is MIXED, so it follows
    every role change in both drivers."""
    tokens, table = policy.mixed_prefill_tokens, policy.mixed_chunk_table
    if tokens is not None:
        base = replace(base, mixed_prefill_tokens=int(tokens))
    return base if table is None else replace(base, mixed_chunk_table=table)

