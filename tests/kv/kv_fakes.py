"""A fake engine end for transport tests: it holds KV under leases and records deliveries."""

from __future__ import annotations

import torch

from dopd.engine.kv_handoff import KVHandle, LeaseTable
from dopd.engine.model import KVPayload, SamplingParams
from dopd.errors import DopdError


def payload(tokens: int, seed: int = 0) -> KVPayload:
    gen = torch.Generator().manual_seed(seed)
    return KVPayload(torch.randn((2, 2, tokens, 2, 8), generator=gen))


def handle(rid: int, source: str, tokens: int = 5) -> KVHandle:
    return KVHandle(rid, source, tuple(range(1, tokens + 1)), 7, tokens,
                    (0,) * (tokens // 16 + 1), 16, 1e9,
                    SamplingParams(max_tokens=4), 0, 4)


class FakeEngine:
    """Source and target side of :class:`dopd.kv.transport.KVEngine`."""

    def __init__(self, name: str, clock=lambda: 0.0) -> None:  # type: ignore[no-untyped-def]
        self.name = name
        self.clock = clock
        self.leases = LeaseTable()
        self.kv: dict[int, KVPayload] = {}
        self.released: list[int] = []
        self.delivered: dict[int, KVPayload] = {}
        self.failed: list[int] = []

    def hold(self, rid: int, kv: KVPayload, lease_s: float = 60.0) -> KVHandle:
        self.kv[rid] = kv
        self.leases.grant(rid, self.clock() + lease_s)
        return handle(rid, self.name, kv.num_tokens)

    def fetch_kv(self, h: KVHandle) -> KVPayload:
        if not self.leases.valid(h.request_id, self.clock()):
            raise DopdError(f"the KV lease of request {h.request_id} expired or was released")
        return self.kv[h.request_id]

    def release_kv(self, rid: int) -> bool:
        self.released.append(rid)
        self.kv.pop(rid, None)
        return self.leases.drop(rid)

    def deliver_kv(self, rid: int, p: KVPayload) -> bool:
        self.delivered[rid] = KVPayload(p.data.clone())
        return True

    def fail_kv(self, rid: int) -> None:
        self.failed.append(rid)
