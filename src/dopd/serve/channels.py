"""ZMQ channels between the front end and the workers, and between workers (KV).

Control: the front end binds one ROUTER socket (:class:`FrontControl`, read by the event loop);
each worker connects a DEALER whose identity is ``w<instance id>`` (:class:`WorkerControl`).
Messages are msgpack maps; these channels carry them as they are. Their schema (typed,
versioned commands and events) is :mod:`dopd.serve.messages`: the worker decodes its commands
(:mod:`dopd.serve.worker`), the front end its events (:class:`~dopd.serve.cluster.WorkerCluster`).

KV: every worker binds a ROUTER (:class:`KVServer`) where decode workers (:class:`KVClient`,
one DEALER per peer) send ``[b"fetch", {rid, source}]``; the answer is
``[b"ok", {rid}, header, data]`` with the data frame sent and received without copies, or
``[b"err", {rid, msg}]``. The caller owns timeouts (a fetch has a deadline in the worker).
Sockets use LINGER 0 so closing never blocks. With cluster keys every socket is a ZMQ CURVE
server or client of the cluster (:mod:`dopd.serve.channel_auth`): a peer without the cluster's
secret key cannot connect, send or read; KV sockets may instead sign every message (HMAC mode:
a fetch ``[b"fetch", {rid, source, nonce}, mac]``, an answer with its mac as a last frame).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import zmq

from dopd.engine.model import KVPayload
from dopd.errors import DopdError
from dopd.serve.channel_auth import (
    ClusterKeys,
    denied,
    release_guard,
    secure_client,
    secure_server,
)
from dopd.serve.wire import pack, payload_frames, payload_from_frames, unpack


def _identity(instance_id: int) -> bytes:
    return f"w{instance_id}".encode()


class WorkerControl:
    """Worker side of the control channel (blocking socket, polled by the worker loop)."""

    def __init__(self, address: str, instance_id: int, keys: ClusterKeys | None = None) -> None:
        self.context = zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        secure_client(self.socket, keys)
        self.socket.setsockopt(zmq.IDENTITY, _identity(instance_id))
        self.socket.setsockopt(zmq.LINGER, 1000)
        self.socket.connect(address)

    def send(self, msg: dict[str, Any]) -> None:
        self.socket.send(pack(msg))

    def receive_all(self) -> list[dict[str, Any]]:
        """Every well-formed message waiting now (does not block); others are dropped."""
        out = []
        while True:
            try:
                data = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return out
            try:
                msg = unpack(data)
            except DopdError:
                continue
            if isinstance(msg, dict):
                out.append(msg)

    def close(self) -> None:
        self.socket.close(linger=1000)


_PENDING_BOUND = 4096  # nonces of unanswered fetches kept per socket (HMAC mode)


def _remember(table: dict[Any, bytes], key: Any, nonce: bytes) -> None:
    if len(table) >= _PENDING_BOUND:
        del table[next(iter(table))]  # the oldest: its fetch has long timed out
    table[key] = nonce


class KVServer:
    """Serves this worker's leased KV to peers; binds a free port on ``host``. With cluster
    keys the socket is a CURVE server, or (``keys.kv_curve`` False) checks the HMAC of every
    fetch and signs every reply (see :mod:`dopd.serve.channel_auth`); ``rejected`` counts
    fetches dropped for a missing or wrong HMAC."""

    def __init__(self, host: str = "127.0.0.1", keys: ClusterKeys | None = None) -> None:
        self.socket = zmq.Context.instance().socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self._mac = keys if keys is not None and not keys.kv_curve else None
        if self._mac is None:
            secure_server(self.socket, keys)
        port = self.socket.bind_to_random_port(f"tcp://{host}")
        self.address = f"tcp://{host}:{port}"
        self.rejected = 0
        self._nonces: dict[tuple[bytes, int], bytes] = {}

    def receive_all(self) -> list[tuple[bytes, int, str]]:
        """Waiting fetch requests as (peer identity, request id, source name)."""
        out = []
        mac = self._mac
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            if len(frames) != (3 if mac is None else 4) or frames[1] != b"fetch":
                self.rejected += mac is not None
                continue
            if mac is not None and not mac.verify(frames[3], b"fetch", frames[2]):
                self.rejected += 1
                continue
            try:
                meta = unpack(frames[2])
                rid = int(meta["rid"])
                out.append((frames[0], rid, str(meta["source"])))
                if mac is not None:
                    _remember(self._nonces, (frames[0], rid), bytes(meta["nonce"]))
            except (DopdError, KeyError, TypeError, ValueError):
                continue  # not a well-formed fetch: nothing to answer to

    def reply(self, ident: bytes, rid: int, payload: KVPayload) -> int:
        """Send ``payload`` (zero-copy); returns its size in bytes."""
        header, body = payload_frames(payload)
        meta = pack({"rid": rid})
        frames: list[Any] = [ident, b"ok", meta, header, body]
        if self._mac is not None:
            nonce = self._nonces.pop((ident, rid), b"")
            frames.append(self._mac.sign(b"ok", meta, nonce, header))
        self.socket.send_multipart(frames, copy=False)
        return body.nbytes

    def reply_error(self, ident: bytes, rid: int, message: str) -> None:
        meta = pack({"rid": rid, "msg": message})
        frames = [ident, b"err", meta]
        if self._mac is not None:
            frames.append(self._mac.sign(b"err", meta, self._nonces.pop((ident, rid), b"")))
        self.socket.send_multipart(frames)

    def close(self) -> None:
        self.socket.close(linger=0)


class KVClient:
    """Fetches KV from peers' :class:`KVServer` sockets (one DEALER per peer address), with
    the same security as theirs; ``rejected`` counts replies dropped for a wrong HMAC."""

    def __init__(self, keys: ClusterKeys | None = None) -> None:
        self._peers: dict[str, zmq.Socket] = {}
        self._keys = keys
        self._mac = keys if keys is not None and not keys.kv_curve else None
        self._nonces: dict[int, bytes] = {}
        self.rejected = 0

    def sockets(self) -> list[zmq.Socket]:
        return list(self._peers.values())

    def fetch(self, address: str, rid: int, source: str) -> None:
        sock = self._peers.get(address)
        if sock is None:
            sock = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            if self._mac is None:
                secure_client(sock, self._keys)
            sock.connect(address)
            self._peers[address] = sock
        if self._mac is None:
            sock.send_multipart([b"fetch", pack({"rid": rid, "source": source})])
            return
        nonce = os.urandom(16)
        meta = pack({"rid": rid, "source": source, "nonce": nonce})
        _remember(self._nonces, rid, nonce)
        sock.send_multipart([b"fetch", meta, self._mac.sign(b"fetch", meta)])

    def receive_all(self) -> list[tuple[int, KVPayload | None, str | None]]:
        """Waiting replies as (request id, payload or None, error message or None)."""
        out: list[tuple[int, KVPayload | None, str | None]] = []
        mac = self._mac
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
                    ok = kind == b"ok" and len(frames) == (4 if mac is None else 5)
                    if mac is not None:
                        signed = (kind, frames[1].bytes, self._nonces.get(rid, b"-"),
                                  *((frames[2].bytes,) if ok else ()))
                        if not mac.verify(frames[-1].bytes, *signed):
                            self.rejected += 1
                            continue
                        del self._nonces[rid]
                    if ok:
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

_BATCH = 256  # messages handled per reader callback before the loop gets a turn
_SAFETY_TICK_S = 0.1


class FrontControl:
    """Front-end side: one ROUTER bound to a free port; :meth:`run` dispatches every worker
    event to ``handler(instance_id, event)`` until :meth:`close` (or cancellation).

    The socket is a plain (blocking-API) ZMQ socket watched by the event loop: its descriptor
    is a loop reader, and the reader callback takes every waiting message (up to a batch) and
    calls the handler directly, with no future or task per message; :meth:`send` is a direct
    non-blocking send. ZMQ's descriptor is edge-triggered and a send may consume its edge, so
    after a send (and on a slow safety tick) waiting input is looked for explicitly. The handler
    runs in the loop; an awaitable it returns is scheduled as a task.
    """

    def __init__(self, host: str = "127.0.0.1", keys: ClusterKeys | None = None) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        secure_server(self.socket, keys)
        port = self.socket.bind_to_random_port(f"tcp://{host}")
        self.address = f"tcp://{host}:{port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handler: EventHandler | None = None
        self._done: asyncio.Future[None] | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._scheduled = False
        self._draining = False
        self._fd = -1
        self._pending: set[asyncio.Future[None]] = set()

    def send(self, instance_id: int, msg: dict[str, Any]) -> bool:
        """Queue ``msg`` for a worker; False when it is not connected (never blocks)."""
        try:
            self.socket.send_multipart([_identity(instance_id), pack(msg)], zmq.NOBLOCK)
        except zmq.ZMQError:
            return False
        if not self._draining:
            self._check()
        return True

    async def run(self, handler: EventHandler) -> None:
        loop = asyncio.get_running_loop()
        self._loop, self._handler = loop, handler
        self._done = loop.create_future()
        self._fd = self.socket.getsockopt(zmq.FD)
        loop.add_reader(self._fd, self._drain)
        loop.call_soon(self._drain)  # anything that arrived before the reader was set
        self._tick = loop.call_later(_SAFETY_TICK_S, self._safety_tick)
        try:
            await self._done
        finally:
            self._stop_reading()

    def _check(self) -> None:
        if self._loop is None or self._scheduled:
            return
        try:
            waiting = self.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN
        except zmq.ZMQError:
            return
        if waiting:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def _safety_tick(self) -> None:
        if self._loop is not None:
            self._check()
            self._tick = self._loop.call_later(_SAFETY_TICK_S, self._safety_tick)

    def _drain(self) -> None:
        self._scheduled = False
        if self._loop is None or self._handler is None:
            return
        self._draining = True
        try:
            for _ in range(_BATCH):
                try:
                    frames = self.socket.recv_multipart(zmq.NOBLOCK)
                except zmq.ZMQError:  # Again: nothing waits; or the socket is closed
                    return
                if len(frames) != 2:
                    continue
                try:
                    instance_id = int(frames[0][1:])
                    event = unpack(frames[1])
                except (ValueError, DopdError):
                    continue
                try:
                    result = self._handler(instance_id, event)
                except Exception as exc:  # one bad event must not stop the channel
                    print(f"dopd: error handling a worker event: {type(exc).__name__}: {exc}",
                          file=sys.stderr, flush=True)
                    continue
                if result is not None:
                    task = asyncio.ensure_future(result)
                    self._pending.add(task)
                    task.add_done_callback(self._pending.discard)
            self._scheduled = True  # a full batch: more may wait
            self._loop.call_soon(self._drain)
        finally:
            self._draining = False

    def _stop_reading(self) -> None:
        if self._loop is not None:
            if self._fd >= 0:
                self._loop.remove_reader(self._fd)
            if self._tick is not None:
                self._tick.cancel()
            if self._done is not None and not self._done.done():
                self._done.set_result(None)
        self._loop = None
        self._handler = None

    @property
    def auth_denied(self) -> int:
        """Connections refused for want of the cluster's key (0 without keys)."""
        return denied(self.context)

    def close(self) -> None:
        self._stop_reading()
        self.socket.close(linger=0)
        release_guard(self.context)
        self.context.term()
