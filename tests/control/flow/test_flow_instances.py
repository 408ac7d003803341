"""The shared life-cycle machine: which action applies how, and the state transitions, driven
by a fake clock (no simulator, no server)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dopd.control.flow import instances as life
from dopd.control.flow.instances import Plan, Refused, Step, plan_action, plan_switch
from dopd.control.policies.base import AddInstance, RemoveInstance, SwitchRole
from dopd.errors import DopdError
from dopd.types import InstanceState, Role

A, S, DR, ST, STOP = (InstanceState.ACTIVE, InstanceState.SWITCHING, InstanceState.DRAINING,
                      InstanceState.STARTING, InstanceState.STOPPED)
P, D, M = Role.PREFILL, Role.DECODE, Role.MIXED


@dataclass
class Fake:
    instance_id: int
    role: Role
    state: InstanceState = InstanceState.ACTIVE
    target_role: Role | None = None


def cluster(*roles: Role) -> list[Fake]:
    return [Fake(i, r) for i, r in enumerate(roles)]


def test_switch_plans() -> None:
    c = cluster(P, D, M)
    assert plan_switch(c, 0, D) == Plan(Step.DRAIN, 0, D, False)
    # migrate only means something where decodes run
    assert plan_switch(c, 0, D, migrate=True).migrate is False
    assert plan_switch(c, 1, P, migrate=True).migrate is True
    # in place only MIXED -> DECODE; otherwise the switch drains
    assert plan_switch(c, 2, D, in_place=True).step == Step.IN_PLACE
    assert plan_switch(c, 2, P, in_place=True).step == Step.DRAIN
    with pytest.raises(Refused, match="no instance 7") as e:
        plan_switch(c, 7, D)
    assert e.value.status == 404
    with pytest.raises(Refused, match="already has role"):
        plan_switch(c, 1, D)
    c[1].state = DR
    with pytest.raises(Refused, match="cannot switch instance 1: it is draining") as e:
        plan_switch(c, 1, P)
    assert e.value.status == 409


def test_a_switch_never_drains_the_last_active_instance() -> None:
    c = cluster(M, P)
    c[1].state = InstanceState.STOPPED
    with pytest.raises(Refused, match="last active one") as e:
        plan_switch(c, 0, P)
    assert e.value.status == 409
    assert plan_switch(c, 0, D, in_place=True).step == Step.IN_PLACE  # no drain: allowed
    c[1].state = InstanceState.ACTIVE
    assert plan_switch(c, 0, P).step == Step.DRAIN


def test_add_and_remove_plans() -> None:
    c = cluster(P, D)
    with pytest.raises(Refused, match="2 of at most 2 are already alive"):
        plan_action(AddInstance(D), c, budget=2)
    assert plan_action(AddInstance(D), c, budget=3) == Plan(Step.ADD, None, D)
    # instances being started but not yet listed count against the budget
    with pytest.raises(Refused):
        plan_action(AddInstance(D), c, budget=3, starting=1)
    c[0].state = STOP
    assert plan_action(AddInstance(P), c, budget=2).step == Step.ADD
    # the last ACTIVE instance is never removed, even when another is starting
    c.append(Fake(2, P, ST))
    with pytest.raises(Refused, match="last active one"):
        plan_action(RemoveInstance(1), c, budget=3)
    c[2].state = A
    removal = plan_action(RemoveInstance(1), c, budget=3)
    assert removal.stops and removal.role is None
    with pytest.raises(DopdError, match="unknown policy action"):
        plan_action("grow", c, budget=3)  # type: ignore[arg-type]


class FakeClock:
    """Time that moves only when told; the test plays a driver with it."""

    def __init__(self) -> None:
        self.now = 0.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def test_transitions_of_a_switch_a_removal_and_an_in_place_change() -> None:
    clock = FakeClock()
    c = cluster(P, D, M)
    seen: list[tuple[float, int, InstanceState, Role]] = []

    def note(m: Fake) -> None:
        seen.append((clock.now, m.instance_id, m.state, m.role))

    switch = plan_action(SwitchRole(0, D), c, budget=3)
    life.begin(c[0], switch)
    note(c[0])
    clock.advance(1.5)  # the drain's work finishes
    assert life.drained(c[0]) == S
    note(c[0])
    clock.advance(2.0)  # role_switch_s
    life.switched(c[0])
    note(c[0])
    assert seen == [(0.0, 0, DR, P), (1.5, 0, S, P), (3.5, 0, A, D)]
    assert c[0].target_role is None

    removal = plan_action(RemoveInstance(1), c, budget=3)
    life.begin(c[1], removal)
    assert c[1].state == DR and c[1].target_role is None
    assert life.drained(c[1]) == STOP

    in_place = plan_action(SwitchRole(2, D, in_place=True), c, budget=3)
    life.begin(c[2], in_place)
    assert (c[2].state, c[2].role) == (A, D)


def test_a_failed_switch_goes_back_to_its_role() -> None:
    c = cluster(M, D)
    life.begin(c[0], plan_switch(c, 0, P))
    life.cancel(c[0], M)
    assert (c[0].state, c[0].role, c[0].target_role) == (A, M, None)
    c[1].state = STOP  # lost while switching: it stays stopped
    life.cancel(c[1], D)
    assert c[1].state == STOP


def test_drains_reroute_unstarted_work() -> None:
    assert life.REROUTE_UNSTARTED is True
