"""Event queue ordering and the monotonic clock."""

from __future__ import annotations

import pytest

from dopd.sim.events import EventQueue, Kind


def test_orders_by_time_then_kind_then_insertion() -> None:
    q = EventQueue()
    q.push(2.0, Kind.ARRIVAL, 1)
    q.push(1.0, Kind.TICK, 2)
    q.push(1.0, Kind.STEP, 3)
    q.push(1.0, Kind.STEP, 4)
    q.push(1.0, Kind.KV, 5)
    order = [q.pop()[4] for _ in range(len(q))]
    assert order == [3, 4, 5, 2, 1]
    assert q.now == 2.0 and q.popped == 5 and not q


def test_time_never_goes_back() -> None:
    q = EventQueue()
    q.push(5.0, Kind.STEP)
    q.pop()
    with pytest.raises(AssertionError):
        q.push(4.0, Kind.STEP)
    q.push(5.0, Kind.STEP)
    assert q.pop()[0] == 5.0
    assert q.peek_time() == float("inf")
