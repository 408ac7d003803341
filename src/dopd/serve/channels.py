"""ZMQ channels between the front end and the workers, and between workers (KV).

Control: the front end binds one ROUTER socket (:class:`FrontControl`, asyncio); each worker
connects a DEALER whose identity is ``w<instance id>`` (:class:`WorkerControl`). Messages are
msgpack maps: commands carry ``op``, events carry ``ev``.

KV: every worker binds a ROUTER (:class:`KVServer`) where decode workers (:class:`KVClient`,
one DEALER per peer) send ``[b"fetch", {rid, source}]``; the answer is
``[b"ok", {rid}, header, data]`` with the data frame sent and received without copies, or
``[b"err", {rid, msg}]``. The caller owns timeouts (a fetch has a deadline in the worker).
Sockets use LINGER 0 so closing never blocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from dopd.engine.model import KVPayload
from dopd.errors import DopdError
from dopd.serve.wire import pack, payload_frames, payload_from_frames, unpack


def _identity(instance_id: int) -> bytes:
    return f"w{instance_id}".encode()


class WorkerControl:
    """Worker side of the control channel (blocking socket, polled by the worker loop)."""

    def __init__(self, address: str, instance_id: int) -> None:
        self.context = zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, _identity(instance_id))
        self.socket.setsockopt(zmq.LINGER, 1000)
        self.socket.connect(address)

    def send(self, msg: dict[str, Any]) -> None:
        self.socket.send(pack(msg))

    def receive_all(self) -> list[dict[str, Any]]:
        """Every message waiting now (does not block)."""
        out = []
        while True:
            try:
                data = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return out
            out.append(unpack(data))

    def close(self) -> None:
        self.socket.close(linger=1000)


class KVServer:
    """Serves this worker's leased KV to peers; binds a free port on ``host``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.socket = zmq.Context.instance().socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        port = self.socket.bind_to_random_port(f"tcp://{host}")
        self.address = f"tcp://{host}:{port}"

    def receive_all(self) -> list[tuple[bytes, int, str]]:
        """Waiting fetch requests as (peer identity, request id, source name)."""
        out = []
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            if len(frames) == 3 and frames[1] == b"fetch":
                try:
                    meta = unpack(frames[2])
                    out.append((frames[0], int(meta["rid"]), str(meta["source"])))
                except (DopdError, KeyError, TypeError, ValueError):
                    continue  # not a well-formed fetch: nothing to answer to

    def reply(self, ident: bytes, rid: int, payload: KVPayload) -> int:
        """Send ``payload`` (zero-copy); returns its size in bytes."""
        header, body = payload_frames(payload)
        self.socket.send_multipart([ident, b"ok", pack({"rid": rid}), header, body], copy=False)
        return body.nbytes

    def reply_error(self, ident: bytes, rid: int, message: str) -> None:
        self.socket.send_multipart([ident, b"err", pack({"rid": rid, "msg": message})])

    def close(self) -> None:
        self.socket.close(linger=0)


class KVClient:
    """Fetches KV from peers' :class:`KVServer` sockets (one DEALER per peer address)."""

    def __init__(self) -> None:
        self._peers: dict[str, zmq.Socket] = {}

    def sockets(self) -> list[zmq.Socket]:
        return list(self._peers.values())

    def fetch(self, address: str, rid: int, source: str) -> None:
        sock = self._peers.get(address)
        if sock is None:
            sock = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(address)
            self._peers[address] = sock
        sock.send_multipart([b"fetch", pack({"rid": rid, "source": source})])

    def receive_all(self) -> list[tuple[int, KVPayload | None, str | None]]:
        """Waiting replies as (request id, payload or None, error message or None)."""
        out: list[tuple[int, KVPayload | None, str | None]] = []
        for sock in self._peers.values():
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                try:
                    kind = frames[0].bytes
                    meta = unpack(frames[1].bytes)
                    rid = int(meta["rid"])
                    if kind == b"ok" and len(frames) == 4:
                        out.append((rid, payload_from_frames(frames[2].bytes,
                                                             frames[3].buffer), None))
                    else:
                        out.append((rid, None, str(meta.get("msg", "KV fetch failed"))))
                except (DopdError, KeyError, TypeError, ValueError, IndexError):
                    continue  # malformed reply: the fetch times out
        return out

    def close(self) -> None:
        for sock in self._peers.values():
            sock.close(linger=0)
        self._peers.clear()


EventHandler = Callable[[int, dict[str, Any]], Awaitable[None] | None]


class FrontControl:
    """Front-end side: one asyncio ROUTER bound to a free port; :meth:`run` dispatches every
    worker event to ``handler(instance_id, event)`` until :meth:`close`."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.context = zmq.asyncio.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        port = self.socket.bind_to_random_port(f"tcp://{host}")
        self.address = f"tcp://{host}:{port}"

    def send(self, instance_id: int, msg: dict[str, Any]) -> bool:
        """Queue ``msg`` for a worker; False when it is not connected (never blocks)."""
        try:
            self.socket.send_multipart([_identity(instance_id), pack(msg)], zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError):
            return False
        return True

    async def run(self, handler: EventHandler) -> None:
        while True:
            try:
                ident, data = await self.socket.recv_multipart()
            except (zmq.ZMQError, asyncio.CancelledError, ValueError):
                return
            try:
                instance_id = int(ident[1:])
                event = unpack(data)
            except (ValueError, DopdError):
                continue
            result = handler(instance_id, event)
            if result is not None:
                await result

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()
