"""The one KV transport interface of a P/D hand-off, and its deadline book.

A transport moves one request's prompt KV from the engine that prefilled it (the *source*) to
the engine that decodes it (the *target*). The hand-off's data lives in the engine
(:mod:`dopd.engine.kv_handoff`: the :class:`~dopd.engine.kv_handoff.KVHandle`, the source's
lease table, the target's pending imports and their recompute fallback); a transport only
carries bytes between two engines, and owns the deadline of each fetch it started.

Contract of :class:`KVTransport` (every implementation keeps it):

* **publish** (source, at prefill end): :meth:`KVTransport.publish` is called with the handle
  of every prompt the source engine finished. The KV stays available to the target until it is
  *released* (the target has it, or gave up) or until the lease ends (the engine's
  ``kv_lease_s``), whichever comes first; nothing holds KV forever. It returns the transport's
  opaque reference to the KV (bytes that ride with the handle to the target), or None when the
  target should ask the source itself.
* **fetch** (target, after :meth:`LLMEngine.accept_remote`): :meth:`KVTransport.fetch` starts
  moving the KV with a deadline of ``timeout_s`` on the transport's clock. It never blocks.
* **progress**: :meth:`KVTransport.pump` does whatever is due without blocking (serves peers'
  requests, sends, receives, checks deadlines) and returns one :class:`ImportResult` per fetch
  that ended; the engine was already told (``deliver_kv`` or ``fail_kv``).
* **timeout and failure**: a fetch whose deadline passes, whose source reports an error, whose
  source is lost (:meth:`KVTransport.lost`), or whose bytes are malformed ends with
  ``ok=False``: the target engine recomputes the prompt itself (``fail_kv``), so a request is
  never stranded by a transport. KV arriving after that is dropped.
* **release and lease expiry**: the source frees its KV once the target has it (each transport
  says how it learns that); :meth:`KVTransport.expire` forgets published KV whose lease ended.
  :attr:`KVTransport.held` counts KV the transport itself still holds (beyond the engine's
  leases), so a drain waits for it.

Implementations: :class:`dopd.kv.in_process.InProcessTransport` (engines of one process: tests,
benchmarks), the ZMQ peer sockets (``dopd.serve.kv_socket.SocketTransport``, with the cluster's
CURVE or HMAC channel security), the Ray object store (``dopd.serve.ray_kv``), each optionally
paced by a modeled link (:mod:`dopd.kv.modeled_link`, emulated timing). A worker picks one by
name from its config (``kv_transport``), never by subclassing the worker.

An external engine's transport (e.g. vLLM's NIXL connector) must provide the same: a
reference the target can resolve without the source's help (publish), a non-blocking pull
(fetch + pump), a way to tell the source to free the KV, and an error on loss or timeout so the
target recomputes. Its KV layout need not be dopd's; an adapter converts to
:class:`~dopd.engine.model.KVPayload` on import, or imports in place and reports ok.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from dopd.engine.kv_handoff import KVHandle
from dopd.engine.model import KVPayload


class KVEngine(Protocol):
    """What a transport drives on each side: an :class:`~dopd.engine.llm_engine.LLMEngine`."""

    name: str

    def fetch_kv(self, handle: KVHandle) -> KVPayload: ...

    def release_kv(self, request_id: int) -> bool: ...

    def deliver_kv(self, request_id: int, payload: KVPayload) -> bool: ...

    def fail_kv(self, request_id: int) -> None: ...


@dataclass(frozen=True, slots=True)
class ImportResult:
    """How one fetch ended: the KV arrived (``ok``, ``nbytes`` after ``wait_s``) or the
    target recomputes the prompt (``msg`` says why)."""

    request_id: int
    ok: bool
    nbytes: int = 0
    wait_s: float = 0.0
    msg: str = ""


class KVTransport(ABC):
    """Moves prefilled KV between engines (see the module docstring for the contract).

    This base class keeps the target side's deadline book: :meth:`_begin` records a fetch,
    :meth:`_complete` ends it (delivering or failing the KV on the engine exactly once) and
    :meth:`_timeouts` ends the overdue ones. ``clock`` is monotonic seconds.
    """

    name = "abstract"

    def __init__(self, engine: KVEngine, timeout_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.timeout_s = timeout_s
        self.clock = clock
        self.fetches: dict[int, tuple[float, float]] = {}  # request id -> (start, deadline)
        self.bytes_sent = 0
        self.bytes_received = 0
        self.failures = 0
        self.address = ""  # where peers reach this end ("" when they need not)

    # ------------------------------------------------------------------ the interface
    @abstractmethod
    def publish(self, handle: KVHandle) -> bytes | None:
        """Source side: offer ``handle``'s KV; the reference that travels with the handle."""

    @abstractmethod
    def fetch(self, handle: KVHandle, source_addr: str, ref: bytes | None) -> None:
        """Target side: start moving the KV of an accepted ``handle`` (never blocks)."""

    @abstractmethod
    def pump(self, polled: bool = True) -> list[ImportResult]:
        """Do what is due without blocking; the fetches that ended (success or fallback).
        ``polled`` False: the caller's poller saw no input on :meth:`sockets` (a hint)."""

    def lost(self, request_id: int, why: str) -> ImportResult | None:
        """The source of a pending fetch is gone: recompute now (None: no such fetch)."""
        return self._complete(request_id, None, why)

    def cancel(self, request_id: int) -> None:
        """The request was aborted here: forget its fetch and anything published for it."""
        self.fetches.pop(request_id, None)

    def expire(self) -> None:  # noqa: B027 - optional hook
        """Forget published KV whose lease ended (called every few hundred ms)."""

    @property
    def held(self) -> int:
        """Published KV the transport itself still holds (0: only the engine's leases)."""
        return 0

    @property
    def rejected(self) -> int:
        """Messages dropped for failing the channel's authentication (0 without any)."""
        return 0

    def sockets(self) -> list[Any]:
        """ZMQ sockets the worker's poller should watch for this transport's input."""
        return []

    def next_due(self) -> float | None:
        """``time.perf_counter`` time at which :meth:`pump` has work without input (None:
        only on input; ``-inf``: keep polling)."""
        return None

    def wait_until(self, deadline: float) -> None:
        """Serve the source side until ``time.perf_counter()`` reaches ``deadline`` (the
        emulated runner's step): it only reads the engine (export); releases wait."""
        left = deadline - time.perf_counter()
        if left > 0:
            time.sleep(left)

    def release_pending(self) -> None:  # noqa: B027 - optional hook
        """Free KV whose sending finished during a step (deferred by :meth:`wait_until`)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sockets and references."""

    # ------------------------------------------------------------------ deadline book
    def _begin(self, request_id: int) -> None:
        now = self.clock()
        self.fetches[request_id] = (now, now + self.timeout_s)

    def _complete(self, request_id: int, payload: KVPayload | None,
                  error: str | None) -> ImportResult | None:
        """End fetch ``request_id``: import ``payload``, or fail it (recompute); None when it
        already ended (timed out, aborted)."""
        timing = self.fetches.pop(request_id, None)
        if timing is None:
            return None
        if payload is not None:
            self.engine.deliver_kv(request_id, payload)
            self.bytes_received += payload.nbytes
            return ImportResult(request_id, True, payload.nbytes, self.clock() - timing[0])
        self.engine.fail_kv(request_id)
        self.failures += 1
        return ImportResult(request_id, False, msg=error or "transfer failed")

    def _timeouts(self) -> list[ImportResult]:
        now = self.clock()
        out = []
        for rid in [r for r, (_, deadline) in self.fetches.items() if now > deadline]:
            result = self._complete(rid, None, "KV transfer timed out")
            if result is not None:
                out.append(result)
        return out
