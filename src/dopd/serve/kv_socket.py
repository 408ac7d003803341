"""The socket KV transport: prefill and decode workers hand KV over peer to peer on ZMQ.

Every worker binds a KV server (:class:`~dopd.serve.channels.KVServer`) and keeps one client
socket per peer (:class:`~dopd.serve.channels.KVClient`), secured as the cluster's channels are
(:mod:`dopd.serve.channel_auth`: CURVE, or an HMAC on every message). Publishing keeps the
handle; the decode worker asks the prefill worker for the KV (``fetch``), which copies it out of
its engine under the lease, replies without copying the frame and releases it. With a modeled
link (emulated mode) a reply waits until the link's modeled transfer is over, also while a step
is "running" (:meth:`SocketTransport.wait_until`); its release then waits for the step's end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import zmq

from dopd.engine.kv_handoff import KVHandle, LeaseTable
from dopd.engine.model import KVPayload
from dopd.errors import DopdError
from dopd.kv.transport import ImportResult, KVEngine, KVTransport
from dopd.serve.channel_auth import ClusterKeys
from dopd.serve.channels import KVClient, KVServer


class Pacer(Protocol):
    """When each KV reply may go (:class:`dopd.serve.engines.ModeledLink`)."""

    def start(self, request_id: int, num_tokens: int) -> None: ...

    def due(self) -> list[int]: ...

    def next_due(self) -> float | None: ...


class LeasedEngine(KVEngine, Protocol):
    leases: LeaseTable


class SocketTransport(KVTransport):
    """KV over the workers' ZMQ peer sockets (see the module docstring)."""

    name = "socket"

    def __init__(self, engine: LeasedEngine, timeout_s: float, host: str = "127.0.0.1",
                 keys: ClusterKeys | None = None, link: Pacer | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(engine, timeout_s, clock)
        self.leased = engine
        self.server = KVServer(host, keys)
        self.client = KVClient(keys)
        self.address = self.server.address
        self.link = link
        self.handles: dict[int, KVHandle] = {}
        self.outbox: dict[int, tuple[bytes, KVPayload]] = {}  # rid -> (peer, KV) in transfer
        self.sent: list[int] = []  # KV replied to during a step, to release after it

    # ------------------------------------------------------------------ source side
    def publish(self, handle: KVHandle) -> bytes | None:
        self.handles[handle.request_id] = handle
        return None

    def serve_requests(self) -> None:
        for ident, rid, source in self.server.receive_all():
            self.serve_fetch(ident, rid, source)

    def serve_fetch(self, ident: bytes, rid: int, source: str) -> None:
        handle = self.handles.pop(rid, None)
        try:
            if handle is None or handle.source != source:
                raise DopdError(f"no KV held for request {rid}")
            payload = self.engine.fetch_kv(handle)
        except DopdError as exc:
            self.server.reply_error(ident, rid, str(exc))
            return
        if self.link is None:
            self.bytes_sent += self.server.reply(ident, rid, payload)
            self.engine.release_kv(rid)
        else:
            self.outbox[rid] = (ident, payload)
            self.link.start(rid, handle.num_tokens)

    def send_due(self) -> None:
        """Send the KV whose modeled transfer is over; released after the step."""
        if self.link is None or not self.outbox:
            return
        for rid in self.link.due():
            ident, payload = self.outbox.pop(rid)
            self.bytes_sent += self.server.reply(ident, rid, payload)
            self.sent.append(rid)

    def release_pending(self) -> None:
        for rid in self.sent:
            self.engine.release_kv(rid)
        self.sent.clear()

    def expire(self) -> None:
        leases = self.leased.leases
        for rid in [r for r in self.handles if r not in leases]:
            del self.handles[rid]

    def wait_until(self, deadline: float) -> None:
        socket = self.server.socket
        while True:
            self.send_due()
            now = time.perf_counter()
            if now >= deadline:
                return
            until = deadline
            due = self.next_due()
            if due is not None:
                until = min(until, due)
            left = until - now
            if left < 1e-3:
                time.sleep(max(left, 0.0))
            elif socket.poll(int(left * 1000), zmq.POLLIN):
                self.serve_requests()

    # ------------------------------------------------------------------ target side
    def fetch(self, handle: KVHandle, source_addr: str, ref: bytes | None) -> None:
        self._begin(handle.request_id)
        self.client.fetch(source_addr, handle.request_id, handle.source)

    def pump(self, polled: bool = True) -> list[ImportResult]:
        """``polled``: the worker's poller saw input (else the sockets are not read)."""
        out: list[ImportResult] = []
        if polled:
            self.serve_requests()
            for rid, payload, error in self.client.receive_all():
                result = self._complete(rid, payload, error)
                if result is not None:
                    out.append(result)
        self.send_due()
        self.release_pending()
        out.extend(self._timeouts())
        return out

    # ------------------------------------------------------------------ plumbing
    @property
    def rejected(self) -> int:
        return self.server.rejected + self.client.rejected

    def sockets(self) -> list[Any]:
        return [self.server.socket, *self.client.sockets()]

    def next_due(self) -> float | None:
        return self.link.next_due() if self.outbox and self.link is not None else None

    def close(self) -> None:
        self.client.close()
        self.server.close()
