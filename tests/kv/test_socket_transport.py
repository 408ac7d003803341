"""The socket KV transport (``dopd.serve.kv_socket``) on real ZMQ sockets: plain, CURVE and
HMAC, timeouts and loss."""

from __future__ import annotations

import time

import pytest
import torch
import zmq
from kv_fakes import FakeEngine, payload

from dopd.kv.transport import ImportResult
from dopd.serve.channel_auth import ClusterKeys
from dopd.serve.kv_socket import SocketTransport


def pump_until(ends: list[SocketTransport], timeout_s: float = 10.0) -> list[ImportResult]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = [r for end in ends for r in end.pump()]
        if got:
            return got
        time.sleep(0.002)
    raise AssertionError("no fetch ended in time")


@pytest.mark.parametrize("auth", ["plain", "curve", "hmac"])
def test_socket_transport_moves_kv_and_releases_it(auth: str) -> None:
    keys = None if auth == "plain" else ClusterKeys.generate(kv_curve=auth == "curve")
    src, dst = FakeEngine("P0"), FakeEngine("D0")
    a = SocketTransport(src, 10.0, keys=keys)
    b = SocketTransport(dst, 10.0, keys=keys)
    try:
        kv = payload(33, seed=4)
        h = src.hold(5, kv)
        assert a.publish(h) is None
        b.fetch(h, a.address, None)
        (r,) = pump_until([a, b])
        assert r.ok and r.request_id == 5 and r.nbytes == kv.nbytes and r.wait_s >= 0
        assert torch.equal(dst.delivered[5].data, kv.data)
        assert src.released == [5] and a.bytes_sent == kv.nbytes and a.rejected == 0
        # a second fetch of the same request: the source holds nothing, the target recomputes
        b.fetch(h, a.address, None)
        (r2,) = pump_until([a, b])
        assert not r2.ok and "no KV held" in r2.msg and dst.failed == [5]
    finally:
        a.close()
        b.close()


def test_an_unanswered_fetch_times_out_into_recompute() -> None:
    silent = zmq.Context.instance().socket(zmq.ROUTER)  # a peer that never answers
    silent.setsockopt(zmq.LINGER, 0)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    dst = FakeEngine("D0")
    b = SocketTransport(dst, 0.2)
    try:
        b.fetch(FakeEngine("P0").hold(1, payload(2)), f"tcp://127.0.0.1:{port}", None)
        (r,) = pump_until([b])
        assert not r.ok and r.msg == "KV transfer timed out" and dst.failed == [1]
        assert b.failures == 1 and not b.fetches
        assert b.lost(1, "gone") is None  # ended once
    finally:
        b.close()
        silent.close(linger=0)


def test_a_lost_source_is_recomputed_at_once_and_late_kv_is_dropped() -> None:
    src, dst = FakeEngine("P0"), FakeEngine("D0")
    a = SocketTransport(src, 10.0)
    b = SocketTransport(dst, 10.0)
    try:
        h = src.hold(2, payload(3))
        a.publish(h)
        b.fetch(h, a.address, None)
        r = b.lost(2, "the prefill instance failed")
        assert r is not None and not r.ok and dst.failed == [2]
        deadline = time.monotonic() + 5
        while not src.released and time.monotonic() < deadline:
            a.pump()
            b.pump()
            time.sleep(0.002)
        assert src.released == [2] and 2 not in dst.delivered  # late KV is ignored
    finally:
        a.close()
        b.close()
