"""The in-process KV transport: engines of one process hand KV over by a direct copy.

Used by tests, benchmarks and any driver that runs several engines in one process. Engines
register on one :class:`KVBus` by name; a fetch copies the KV out of the source engine under its
lease (the engine's ``fetch_kv``), releases it there and delivers it at the next
:meth:`InProcessTransport.pump`. A lease that ended, or a source that is not on the bus, ends
the fetch with the recompute fallback.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from dopd.engine.kv_handoff import KVHandle
from dopd.engine.model import KVPayload
from dopd.errors import DopdError
from dopd.kv.transport import ImportResult, KVEngine, KVTransport


class KVBus:
    """The engines of one process, by name (their handles' ``source``)."""

    def __init__(self) -> None:
        self.engines: dict[str, KVEngine] = {}

    def join(self, engine: KVEngine) -> None:
        self.engines[engine.name] = engine

    def leave(self, name: str) -> None:
        self.engines.pop(name, None)


class InProcessTransport(KVTransport):
    """One engine's end of a :class:`KVBus` (see the module docstring)."""

    name = "in_process"

    def __init__(self, engine: KVEngine, bus: KVBus, timeout_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(engine, timeout_s, clock)
        self.bus = bus
        bus.join(engine)
        self._arrived: list[tuple[int, KVPayload | None, str | None]] = []

    def publish(self, handle: KVHandle) -> bytes | None:
        return None  # the KV stays under the engine's lease until fetched

    def fetch(self, handle: KVHandle, source_addr: str, ref: bytes | None) -> None:
        self._begin(handle.request_id)
        source = self.bus.engines.get(handle.source)
        if source is None:
            self._arrived.append((handle.request_id, None, f"no engine {handle.source!r}"))
            return
        try:
            payload = source.fetch_kv(handle)
        except DopdError as exc:
            self._arrived.append((handle.request_id, None, str(exc)))
            return
        source.release_kv(handle.request_id)
        self.bytes_sent += payload.nbytes
        self._arrived.append((handle.request_id, payload, None))

    def pump(self, polled: bool = True) -> list[ImportResult]:
        arrived, self._arrived = self._arrived, []
        out = [r for rid, payload, error in arrived
               if (r := self._complete(rid, payload, error)) is not None]
        return out + self._timeouts()


class _Target(KVEngine, Protocol):
    def accept_remote(self, handle: KVHandle) -> int: ...


def transfer_in_process(source: KVEngine, target: _Target, handle: KVHandle) -> bool:
    """Hand ``handle``'s request from ``source`` to ``target`` at once: the target accepts
    the request, the source's KV is copied under its lease and released, and the target
    receives it. False when the lease had expired: the target then recomputes the prompt at
    its next step."""
    bus = KVBus()
    bus.join(source)
    transport = InProcessTransport(target, bus)
    target.accept_remote(handle)
    transport.fetch(handle, "", None)
    results = transport.pump()
    return bool(results) and results[0].ok
