"""The in-process KV transport: delivery, release, the lease and the recompute fallback."""

from __future__ import annotations

import torch
from kv_fakes import FakeEngine, payload

from dopd.kv import InProcessTransport, KVBus, KVTransport


def test_in_process_delivers_releases_and_counts() -> None:
    bus = KVBus()
    src, dst = FakeEngine("P0"), FakeEngine("D0")
    InProcessTransport(src, bus)
    t = InProcessTransport(dst, bus)
    assert isinstance(t, KVTransport)
    kv = payload(6)
    h = src.hold(3, kv)
    assert t.publish(h) is None
    t.fetch(h, "", None)
    (r,) = t.pump()
    assert r.ok and r.request_id == 3 and r.nbytes == kv.nbytes
    assert torch.equal(dst.delivered[3].data, kv.data) and src.released == [3]
    assert t.pump() == [] and t.bytes_received == kv.nbytes and not t.fetches


def test_an_expired_lease_or_a_missing_source_falls_back_to_recompute() -> None:
    now = [0.0]
    bus = KVBus()
    src, dst = FakeEngine("P0", lambda: now[0]), FakeEngine("D0")
    InProcessTransport(src, bus)
    t = InProcessTransport(dst, bus)
    h = src.hold(1, payload(4), lease_s=1.0)
    now[0] = 2.0  # the lease ended
    t.fetch(h, "", None)
    (r,) = t.pump()
    assert not r.ok and "expired" in r.msg and dst.failed == [1] and t.failures == 1
    bus.leave("P0")
    h2 = src.hold(2, payload(4))
    t.fetch(h2, "", None)
    (r2,) = t.pump()
    assert not r2.ok and "no engine" in r2.msg and dst.failed == [1, 2]


def test_a_fetch_that_outlives_its_deadline_is_recomputed_once() -> None:
    now = [0.0]
    bus = KVBus()
    dst = FakeEngine("D0")
    t = InProcessTransport(dst, bus, timeout_s=1.0, clock=lambda: now[0])
    t._begin(9)  # a fetch under way (as a slow transport would have it)
    assert t.pump() == []
    now[0] = 1.5
    (r,) = t.pump()
    assert not r.ok and r.msg == "KV transfer timed out" and dst.failed == [9]
    assert t.lost(9, "gone") is None  # ended already: nothing twice
