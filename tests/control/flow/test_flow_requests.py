"""Placement candidates and the hand-off queue of the shared request flow."""

from __future__ import annotations

from dataclasses import dataclass

from dopd.control.flow.requests import HandoffQueue, Whole, placement_pools
from dopd.types import InstanceState, Role

P, D, M = Role.PREFILL, Role.DECODE, Role.MIXED


@dataclass
class Fake:
    instance_id: int
    role: Role
    state: InstanceState = InstanceState.ACTIVE


def ids(xs: list[Fake] | None) -> list[int] | None:
    return None if xs is None else [x.instance_id for x in xs]


def test_pools_by_role_and_state() -> None:
    c = [Fake(0, P), Fake(1, D), Fake(2, M), Fake(3, P, InstanceState.DRAINING)]
    pools = placement_pools(c)
    assert ids(pools.prefill) == [0, 2] and ids(pools.decode) == [1, 2]
    assert pools.whole is None and pools.how is None and not pools.empty


def test_decode_only_serves_colocated_and_prefill_only_local() -> None:
    pools = placement_pools([Fake(0, D), Fake(1, D), Fake(2, P, InstanceState.SWITCHING)])
    assert ids(pools.whole) == [0, 1] and pools.how == Whole.COLOCATED
    pools = placement_pools([Fake(0, P), Fake(1, D, InstanceState.STARTING)])
    assert ids(pools.whole) == [0] and pools.how == Whole.LOCAL
    assert placement_pools([Fake(0, M, InstanceState.STOPPED)]).empty


def test_handoffs_reserve_in_order_before_their_transfer() -> None:
    q: HandoffQueue[str] = HandoffQueue()
    for name, tokens in (("a", 100), ("b", 500), ("c", 50)):
        q.push(name, tokens)
    assert len(q) == 3 and q.tokens == 650
    free = [120]

    def reserve(name: str) -> bool:
        need = {"a": 100, "b": 500, "c": 50}[name]
        if need > free[0]:
            return False
        free[0] -= need
        return True

    # "c" would fit, but waits behind "b": first come, first reserved
    assert q.admit(reserve) == ["a"]
    assert q.tokens == 550 and free[0] == 20
    # the instance's own preempted requests come first
    free[0] = 10_000
    assert q.admit(reserve, blocked=True) == []
    assert q.admit(reserve) == ["b", "c"] and not q and q.tokens == 0
    q.push("d", 7)
    assert q.take_all() == ["d"] and q.tokens == 0
