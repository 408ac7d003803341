"""ZMQ CURVE on the worker channels (real sockets in this process): the cluster's peers talk, a
peer without the cluster's secret key gets nothing through and reads nothing, garbage is dropped
and the socket keeps serving."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
import torch
import zmq

from dopd.engine.model import KVPayload
from dopd.serve.channel_auth import ClusterKeys, denied
from dopd.serve.channels import FrontControl, KVClient, KVServer, WorkerControl
from dopd.serve.engines import EngineSpec
from dopd.serve.wire import pack
from dopd.serve.worker import WorkerSpec
from dopd.types import Role

KEYS = ClusterKeys.generate()
WAIT_S = 0.6


def wait_fetches(server: KVServer, timeout_s: float) -> list[tuple[bytes, int, str]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.socket.poll(50, zmq.POLLIN):
            got = server.receive_all()
            if got:
                return got
    return []


def wait_replies(client: KVClient, timeout_s: float) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = client.receive_all()
        if got:
            return got
        time.sleep(0.01)
    return []


@pytest.fixture()
def kv_server() -> Any:
    server = KVServer("127.0.0.1", KEYS)
    yield server
    server.close()


def fetch_roundtrip(server: KVServer, client: KVClient, rid: int) -> KVPayload | None:
    payload = KVPayload(torch.arange(64, dtype=torch.float32).reshape(2, 2, 4, 2, 2))
    client.fetch(server.address, rid, "src")
    fetches = wait_fetches(server, 5.0)
    assert [(r, s) for _, r, s in fetches] == [(rid, "src")]
    server.reply(fetches[0][0], rid, payload)
    replies = wait_replies(client, 5.0)
    assert len(replies) == 1 and replies[0][0] == rid
    return replies[0][1]  # type: ignore[no-any-return]


def test_cluster_peers_exchange_kv(kv_server: KVServer) -> None:
    client = KVClient(KEYS)
    try:
        got = fetch_roundtrip(kv_server, client, 7)
        assert got is not None and torch.equal(got.data, torch.arange(64.0).reshape(2, 2, 4, 2, 2))
    finally:
        client.close()


def test_a_plain_client_cannot_ask_for_kv(kv_server: KVServer) -> None:
    plain = KVClient()  # no keys: a local user's ordinary ZMQ socket
    try:
        for rid in range(20):
            plain.fetch(kv_server.address, rid, "src")
        assert wait_fetches(kv_server, WAIT_S) == []
        assert plain.receive_all() == []
    finally:
        plain.close()


def test_a_client_with_its_own_key_is_refused_and_counted(kv_server: KVServer) -> None:
    ctx = zmq.Context.instance()
    before = denied(ctx)
    stranger = ClusterKeys.generate()
    sock = zmq.Context().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.curve_secretkey, sock.curve_publickey = stranger.secret, stranger.public
    sock.curve_serverkey = KEYS.public  # even knowing the server's public key
    sock.connect(kv_server.address)
    try:
        sock.send_multipart([b"fetch", pack({"rid": 1, "source": "src"})])
        assert wait_fetches(kv_server, WAIT_S) == []
        deadline = time.monotonic() + 5.0
        while denied(ctx) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert denied(ctx) > before
    finally:
        sock.close(0)


def test_garbage_bytes_are_dropped_and_the_socket_keeps_serving(kv_server: KVServer) -> None:
    port = int(kv_server.address.rsplit(":", 1)[1])
    for junk in (b"\xff" * 30, b"\x01\x00" + b"A" * 28, bytes(range(30)) * 100):
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
            raw.sendall(junk)
            time.sleep(0.05)
    assert wait_fetches(kv_server, 0.2) == []
    client = KVClient(KEYS)
    try:
        assert fetch_roundtrip(kv_server, client, 3) is not None
    finally:
        client.close()


def test_front_control_takes_only_the_clusters_workers() -> None:
    async def scenario() -> list[tuple[int, dict[str, Any]]]:
        events: list[tuple[int, dict[str, Any]]] = []
        front = FrontControl("127.0.0.1", KEYS)
        task = asyncio.create_task(front.run(lambda iid, ev: events.append((iid, ev))))
        impostor = zmq.Context().socket(zmq.DEALER)  # takes a worker's identity, no key
        impostor.setsockopt(zmq.LINGER, 0)
        impostor.setsockopt(zmq.IDENTITY, b"w0")
        impostor.connect(front.address)
        impostor.send(pack({"ev": "out", "items": [[1, [5], "forged", 1, 1, True, "stop",
                                                     None]]}))
        worker = WorkerControl(front.address, 1, KEYS)
        worker.send({"ev": "stats", "stats": {}})
        deadline = time.monotonic() + 5.0
        while not events and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(WAIT_S)
        assert front.send(1, {"op": "stop"})
        assert not front.send(0, {"op": "stop"})  # the impostor is not connected
        msgs: list[dict[str, Any]] = []
        while not msgs and time.monotonic() < deadline:
            msgs = worker.receive_all()
            await asyncio.sleep(0.01)
        assert msgs == [{"op": "stop"}]
        impostor.close(0)
        worker.close()
        front.close()
        await asyncio.wait_for(task, 5.0)
        return events

    assert asyncio.run(scenario()) == [(1, {"ev": "stats", "stats": {}})]


def test_worker_control_drops_malformed_messages() -> None:
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    worker = WorkerControl(f"tcp://127.0.0.1:{port}", 4)
    try:
        worker.send({"ev": "hello"})
        assert router.poll(5000)
        ident, _ = router.recv_multipart()
        for junk in (b"\xc1\xc1", pack([1, 2, 3]), pack("stop"), pack({"op": "abort", "rid": 1})):
            router.send_multipart([ident, junk])
        deadline = time.monotonic() + 5.0
        got: list[dict[str, Any]] = []
        while not got and time.monotonic() < deadline:
            got = worker.receive_all()
            time.sleep(0.01)
        assert got == [{"op": "abort", "rid": 1}]
    finally:
        worker.close()
        router.close(0)


def test_secrets_never_show_in_a_repr() -> None:
    spec = WorkerSpec(0, "tcp://127.0.0.1:1", EngineSpec("dopd-tiny", Role.MIXED), keys=KEYS)
    assert KEYS.secret.decode() not in repr(KEYS)
    assert KEYS.secret.decode() not in repr(spec) and "keys" not in repr(spec)


HMAC_KEYS = ClusterKeys.generate(kv_curve=False)


def test_hmac_mode_peers_exchange_kv_and_a_bad_hmac_is_dropped_and_counted() -> None:
    server = KVServer("127.0.0.1", HMAC_KEYS)
    client = KVClient(HMAC_KEYS)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.address)
    try:
        got = fetch_roundtrip(server, client, 11)
        assert got is not None and got.data.shape == (2, 2, 4, 2, 2)
        meta = pack({"rid": 11, "source": "src", "nonce": b"n" * 16})
        stranger = ClusterKeys.generate(kv_curve=False)
        for frames in ([b"fetch", pack({"rid": 11, "source": "src"})],  # no HMAC
                       [b"fetch", meta, b"\0" * 32],  # a wrong one
                       [b"fetch", meta, stranger.sign(b"fetch", meta)],  # another cluster's
                       [b"fetch", pack({"rid": 12, "source": "src", "nonce": b"x"}),
                        HMAC_KEYS.sign(b"fetch", meta)]):  # a valid HMAC of other bytes
            sock.send_multipart(frames)
        assert wait_fetches(server, WAIT_S) == []
        assert server.rejected == 4
        assert fetch_roundtrip(server, client, 12) is not None  # still serving
    finally:
        sock.close(0)
        client.close()
        server.close()


def test_hmac_mode_a_forged_kv_reply_is_dropped_and_counted() -> None:
    """A process that took a peer's port answers a fetch: without the key its KV is refused."""
    ctx = zmq.Context.instance()
    impostor = ctx.socket(zmq.ROUTER)
    impostor.setsockopt(zmq.LINGER, 0)
    port = impostor.bind_to_random_port("tcp://127.0.0.1")
    client = KVClient(HMAC_KEYS)
    try:
        client.fetch(f"tcp://127.0.0.1:{port}", 5, "src")
        assert impostor.poll(5000)
        ident, kind = impostor.recv_multipart()[:2]
        assert kind == b"fetch"
        header = pack({"dtype": "float32", "shape": [1]})
        impostor.send_multipart([ident, b"ok", pack({"rid": 5}), header, b"\0" * 4,
                                 b"\0" * 32])
        impostor.send_multipart([ident, b"ok", pack({"rid": 5}), header, b"\0" * 4])
        impostor.send_multipart([ident, b"err", pack({"rid": 5, "msg": "forged"}), b"\0" * 32])
        deadline = time.monotonic() + 5.0
        while client.rejected < 3 and time.monotonic() < deadline:
            assert client.receive_all() == []
            time.sleep(0.01)
        assert client.rejected == 3
    finally:
        client.close()
        impostor.close(0)
