"""Modeled KV transfer: each sending instance's link shares its bandwidth among its transfers.

A transfer of ``b`` bytes takes a fixed ``latency_s`` plus its bytes over the link, where the
link's ``bandwidth_Bps`` is split equally among the transfers in flight on it (processor
sharing). Finish times are exact under that model: each link keeps a virtual clock ``V`` (bytes
served per transfer so far), which grows at ``bandwidth / n`` while ``n`` transfers are active;
a transfer started at ``V0`` finishes its bytes when ``V`` reaches ``V0 + b``. The receiving side
is not modeled as a bottleneck (a documented simplification: one NIC per GPU and many-to-one
hand-offs are rare because decode placement spreads them).
"""

from __future__ import annotations

import heapq

from dopd.errors import require


class _Link:
    __slots__ = ("active", "clock", "heap", "last_t", "seq", "version")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, int]] = []  # (virtual finish, seq, request id)
        self.clock = 0.0
        self.last_t = 0.0
        self.active = 0
        self.seq = 0
        self.version = 0


class TransferNetwork:
    """Processor-sharing KV links, one per sending instance.

    The caller owns the event queue: :meth:`start` and :meth:`complete` return the time of the
    link's next bytes-done event (with a version; stale versions are ignored by
    :meth:`complete`), or None when the link is idle.
    """

    __slots__ = ("_links", "bandwidth_Bps", "latency_s")

    def __init__(self, latency_s: float, bandwidth_Bps: float) -> None:
        require(latency_s >= 0, f"transfer latency must be >= 0 s, got {latency_s}")
        require(bandwidth_Bps > 0, f"transfer bandwidth must be > 0 B/s, got {bandwidth_Bps}")
        self.latency_s = latency_s
        self.bandwidth_Bps = bandwidth_Bps
        self._links: dict[int, _Link] = {}

    def in_flight(self, source: int) -> int:
        link = self._links.get(source)
        return link.active if link is not None else 0

    def _advance(self, link: _Link, now: float) -> None:
        if link.active:
            link.clock += (now - link.last_t) * self.bandwidth_Bps / link.active
        link.last_t = now

    def _next(self, link: _Link) -> tuple[float, int] | None:
        if not link.heap:
            return None
        link.version += 1
        left = link.heap[0][0] - link.clock
        t = link.last_t + max(left, 0.0) * link.active / self.bandwidth_Bps
        return t, link.version

    def start(self, now: float, source: int, request_id: int, num_bytes: float
              ) -> tuple[float, int] | None:
        """Begin sending ``num_bytes`` for ``request_id`` from ``source``; returns the link's
        next (bytes-done time, version)."""
        link = self._links.get(source)
        if link is None:
            link = self._links[source] = _Link()
        self._advance(link, now)
        link.seq += 1
        heapq.heappush(link.heap, (link.clock + num_bytes, link.seq, request_id))
        link.active += 1
        return self._next(link)

    def complete(self, now: float, source: int, version: int
                 ) -> tuple[list[int], tuple[float, int] | None] | None:
        """Handle a bytes-done event: the request ids whose bytes are all sent (they arrive
        ``latency_s`` later) and the link's next (time, version); None for a stale event."""
        link = self._links[source]
        if version != link.version:
            return None
        self._advance(link, now)
        done: list[int] = []
        # Rounding: anything within a millionth of a byte per transfer is done.
        limit = link.clock + 1e-6
        heap = link.heap
        while heap and heap[0][0] <= limit:
            done.append(heapq.heappop(heap)[2])
        link.active -= len(done)
        if not done:  # float drift: finish the earliest one now
            done.append(heapq.heappop(heap)[2])
            link.active -= 1
        return done, self._next(link)
