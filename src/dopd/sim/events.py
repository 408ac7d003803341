"""The discrete-event queue: a heap ordered by (time, priority, sequence number).

Ties in time are broken by the event kind's priority, then by insertion order, so a run is a
pure function of its inputs. Simulated time never goes back: :meth:`EventQueue.pop` raises
``AssertionError`` if the heap yields an event earlier than the last one.
"""

from __future__ import annotations

import heapq
from enum import IntEnum

Event = tuple[float, int, int, int, int, int]
"""(time, priority, sequence, kind, a, b): ``a`` and ``b`` are kind-specific integers."""


class Kind(IntEnum):
    """Event kinds; the value is also the priority among events at the same time."""

    STEP = 0  # an instance's step or decode run ends (a: instance, b: version)
    LINK = 1  # a KV link finishes sending (a: source instance, b: link version)
    KV = 2  # KV bytes arrive at the decode instance (a: request)
    STATE = 3  # a cold start or role switch is over (a: instance, b: version)
    ARRIVAL = 4  # a request arrives (a: request index)
    TICK = 5  # the cluster policy's periodic hook


class EventQueue:
    """Min-heap of events with a monotonic clock (:attr:`now`)."""

    __slots__ = ("_heap", "_seq", "now", "popped")

    def __init__(self) -> None:
        self._heap: list[Event] = []
        self._seq = 0
        self.now = 0.0
        self.popped = 0

    def push(self, time: float, kind: int, a: int = 0, b: int = 0) -> None:
        """Schedule an event; ``time`` must not be before :attr:`now`."""
        assert time >= self.now, f"event at {time} scheduled before now {self.now}"
        self._seq += 1
        heapq.heappush(self._heap, (time, kind, self._seq, kind, a, b))

    def pop(self) -> Event:
        """Remove and return the earliest event, advancing :attr:`now` to its time."""
        event = heapq.heappop(self._heap)
        assert event[0] >= self.now, "simulated time went back"
        self.now = event[0]
        self.popped += 1
        return event

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def peek_time(self) -> float:
        """Time of the earliest event (``inf`` when empty)."""
        return self._heap[0][0] if self._heap else float("inf")
