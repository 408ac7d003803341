"""Paged KV block manager: ids, check-then-commit, watermark, refcounts, reservations."""

from __future__ import annotations

import numpy as np
import pytest

from dopd.engine.block_manager import BlockManager
from dopd.errors import DopdError


def test_allocates_lowest_ids_first_and_frees_them() -> None:
    bm = BlockManager(8, block_size=4, watermark=0.0)
    assert bm.allocate(1, 9)  # 3 blocks
    assert bm.table(1) == [0, 1, 2]
    assert bm.allocate(2, 4)
    assert bm.table(2) == [3]
    assert bm.free_blocks == 4 and bm.used_blocks == 4
    assert bm.free(1) == 3
    assert bm.allocate(3, 1)
    assert bm.table(3) == [0]
    bm.check()


def test_growth_appends_only_missing_blocks() -> None:
    bm = BlockManager(8, block_size=4, watermark=0.0)
    assert bm.allocate(1, 4)
    assert bm.allocate(1, 4) and bm.held(1) == 1
    assert bm.allocate(1, 5) and bm.table(1) == [0, 1]
    assert bm.allocate(1, 12) and bm.held(1) == 3
    bm.check()


def test_failed_allocation_changes_nothing() -> None:
    bm = BlockManager(4, block_size=16, watermark=0.0)
    assert bm.allocate(1, 32)
    before = (bm.free_blocks, list(bm.table(1)))
    assert not bm.allocate(2, 48)  # needs 3, only 2 free
    assert not bm.has(2)
    assert not bm.allocate(1, 100)
    assert (bm.free_blocks, list(bm.table(1))) == before
    bm.check()


def test_watermark_limits_admission_not_growth() -> None:
    bm = BlockManager(100, block_size=1, watermark=0.05)
    assert bm.watermark_blocks == 5
    assert not bm.can_allocate(1, 96)
    assert bm.allocate(1, 95)
    assert not bm.allocate(2, 1)  # would leave 4 < 5 free
    assert bm.allocate(1, 100, admission=False)  # a running request may take the last blocks
    assert bm.free_blocks == 0
    bm.check()


def test_fork_shares_blocks_until_the_last_reference() -> None:
    bm = BlockManager(6, block_size=2, watermark=0.0)
    bm.allocate(1, 4)
    bm.fork(1, 2)
    assert bm.table(2) == bm.table(1) == [0, 1]
    assert bm.refcount(0) == 2
    assert bm.free(1) == 0  # still referenced by 2
    assert bm.free_blocks == 4
    bm.check()
    assert bm.free(2) == 2
    assert bm.free_blocks == 6 and bm.refcount(0) == 0
    bm.check()
    with pytest.raises(DopdError):
        bm.allocate(3, 2)
        bm.fork(1, 3)


def test_reservation_holds_back_free_blocks() -> None:
    bm = BlockManager(10, block_size=1, watermark=0.0)
    assert bm.reserve(7)
    assert bm.free_blocks == 3
    assert not bm.allocate(1, 4)
    assert not bm.reserve(4)
    bm.unreserve(7)
    assert bm.allocate(1, 4)
    with pytest.raises(DopdError):
        bm.unreserve(1)
    bm.check()


def test_bad_construction_is_rejected() -> None:
    with pytest.raises(DopdError, match="at least one block"):
        BlockManager(0)
    with pytest.raises(DopdError, match="watermark"):
        BlockManager(10, watermark=1.5)


def test_random_operations_keep_invariants() -> None:
    rng = np.random.default_rng(7)
    bm = BlockManager(64, block_size=4, watermark=0.02)
    live: dict[int, int] = {}
    next_id = 0
    for _ in range(3000):
        op = rng.integers(4)
        if op == 0 or not live:
            tokens = int(rng.integers(1, 60))
            free_before = bm.free_blocks
            ok = bm.allocate(next_id, tokens)
            assert ok == (bm.blocks_for(tokens) <= free_before - bm.watermark_blocks)
            if ok:
                live[next_id] = tokens
            next_id += 1
        elif op == 1:
            owner = int(rng.choice(list(live)))
            tokens = live[owner] + int(rng.integers(1, 20))
            if bm.allocate(owner, tokens, admission=False):
                live[owner] = tokens
        elif op == 2:
            owner = int(rng.choice(list(live)))
            bm.free(owner)
            del live[owner]
        else:
            owner = int(rng.choice(list(live)))
            bm.fork(owner, next_id)
            live[next_id] = live[owner]
            next_id += 1
        for owner, tokens in live.items():
            assert bm.held(owner) >= bm.blocks_for(tokens)
        bm.check()
    for owner in list(live):
        bm.free(owner)
    assert bm.free_blocks == 64
    bm.check()
