"""KV export/import between paged caches (tokens and whole blocks) and the byte format."""

from __future__ import annotations

import pytest
import torch

from dopd.engine.model import (
    KVPayload,
    PagedKVCache,
    export_blocks,
    export_kv,
    import_blocks,
    import_kv,
)
from dopd.errors import DopdError


def filled_cache(
    block_size: int = 4, num_blocks: int = 6, dtype: torch.dtype = torch.float32
) -> PagedKVCache:
    cache = PagedKVCache(2, num_blocks, 3, 8, block_size=block_size, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    cache.data.copy_(torch.randn(cache.data.shape, generator=gen))
    return cache


def token_kv(cache: PagedKVCache, table: list[int], n: int) -> torch.Tensor:
    """Reference: [layers, 2, n, heads, dim] read token by token."""
    bs = cache.block_size
    rows = [cache.data[:, :, table[p // bs], p % bs] for p in range(n)]
    return torch.stack(rows, dim=2)


def test_export_reads_tokens_in_order_across_blocks() -> None:
    cache = filled_cache()
    payload = export_kv(cache, [5, 0, 3], 10)
    assert payload.num_tokens == 10
    assert payload.data.shape == (2, 2, 10, 3, 8)
    assert torch.equal(payload.data, token_kv(cache, [5, 0, 3], 10))


def test_import_into_other_block_size_and_dtype_round_trips() -> None:
    src = filled_cache(block_size=4)
    payload = export_kv(src, [1, 4, 2], 11)
    dst = PagedKVCache(2, 9, 3, 8, block_size=3, dtype=torch.bfloat16)
    version = dst.version
    import_kv(dst, [8, 0, 5, 2], payload)
    assert dst.version == version + 1
    back = export_kv(dst, [8, 0, 5, 2], 11)
    assert back.data.dtype == torch.bfloat16
    assert torch.allclose(back.data.float(), payload.data, atol=1e-2, rtol=1e-2)
    untouched = [b for b in range(9) if b not in (8, 0, 5, 2)]
    assert dst.data[:, :, untouched].abs().sum() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_bytes_round_trip(dtype: torch.dtype) -> None:
    payload = export_kv(filled_cache(dtype=dtype), [2, 3], 7)
    blob = payload.to_bytes()
    assert len(blob) > payload.nbytes
    again = KVPayload.from_bytes(blob)
    assert again.data.dtype == dtype
    assert torch.equal(again.data, payload.data)
    empty = KVPayload.from_bytes(export_kv(filled_cache(), [], 0).to_bytes())
    assert empty.num_tokens == 0


def test_bad_payloads_and_tables_raise() -> None:
    cache = filled_cache()
    blob = export_kv(cache, [0], 3).to_bytes()
    with pytest.raises(DopdError, match="bad magic"):
        KVPayload.from_bytes(b"x" + blob[1:])
    with pytest.raises(DopdError, match="data bytes"):
        KVPayload.from_bytes(blob[:-4])
    with pytest.raises(DopdError, match="cannot hold 9 tokens"):
        export_kv(cache, [0, 1], 9)
    with pytest.raises(DopdError, match="out of range"):
        export_kv(cache, [0, 6], 6)
    other = PagedKVCache(2, 4, 2, 8, block_size=4)
    with pytest.raises(DopdError, match="does not fit"):
        import_kv(other, [0], KVPayload.from_bytes(blob))
    with pytest.raises(DopdError, match="KV payload must be"):
        KVPayload(torch.zeros(2, 3, 4))


def test_whole_block_copy() -> None:
    src = filled_cache()
    blocks = export_blocks(src, [4, 1])
    assert blocks.shape == (2, 2, 2, 4, 3, 8)
    dst = PagedKVCache(2, 5, 3, 8, block_size=4)
    import_blocks(dst, [0, 3], blocks)
    assert torch.equal(dst.data[:, :, 0], src.data[:, :, 4])
    assert torch.equal(dst.data[:, :, 3], src.data[:, :, 1])
    with pytest.raises(DopdError, match="expected"):
        import_blocks(dst, [0], blocks)
    with pytest.raises(DopdError, match="out of range"):
        export_blocks(src, [6])
