"""Reading a sequence's KV out of a paged cache and writing it into another (P/D hand-off).

:func:`export_kv` gathers a sequence's first ``num_tokens`` tokens into one contiguous
:class:`KVPayload`; :func:`import_kv` scatters it into other blocks of another cache, which may use
a different block size or dtype. :meth:`KVPayload.to_bytes` / :meth:`KVPayload.from_bytes` give a
self-describing byte form for sockets. :func:`export_blocks` / :func:`import_blocks` copy whole
blocks between caches of the same block size without re-layout.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dopd.engine.model.paged_cache import PagedKVCache
from dopd.errors import DopdError, require

_MAGIC = b"DOPDKV1\n"
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_DTYPES = {v: k for k, v in _DTYPE_NAMES.items()}


@dataclass(frozen=True)
class KVPayload:
    """K and V of one sequence: ``data`` is [num_layers, 2, num_tokens, num_kv_heads, head_dim]."""

    data: torch.Tensor

    def __post_init__(self) -> None:
        require(
            self.data.dim() == 5 and self.data.shape[1] == 2,
            "KV payload must be [layers, 2, tokens, kv_heads, head_dim], "
            f"got {tuple(self.data.shape)}",
        )
        require(self.data.dtype in _DTYPE_NAMES, f"unsupported KV dtype {self.data.dtype}")

    @property
    def num_tokens(self) -> int:
        return int(self.data.shape[2])

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def to_bytes(self) -> bytes:
        """Magic, a length-prefixed JSON header (dtype, shape), then the raw little-endian data."""
        header = json.dumps(
            {"dtype": _DTYPE_NAMES[self.data.dtype], "shape": list(self.data.shape)}
        ).encode()
        raw = self.data.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()
        return _MAGIC + struct.pack("<I", len(header)) + header + raw

    @classmethod
    def from_bytes(cls, blob: bytes | bytearray | memoryview) -> KVPayload:
        """Inverse of :meth:`to_bytes`; malformed input raises DopdError."""
        view = memoryview(blob)
        require(bytes(view[: len(_MAGIC)]) == _MAGIC, "not a dopd KV payload (bad magic)")
        start = len(_MAGIC) + 4
        require(len(view) >= start, "truncated KV payload header")
        (hlen,) = struct.unpack("<I", view[len(_MAGIC) : start])
        try:
            header = json.loads(bytes(view[start : start + hlen]))
            dtype, shape = _DTYPES[header["dtype"]], tuple(int(s) for s in header["shape"])
        except (ValueError, KeyError, TypeError):
            raise DopdError("malformed KV payload header") from None
        body = view[start + hlen :]
        expected = torch.Size(shape).numel() * torch.empty(0, dtype=dtype).element_size()
        require(
            len(body) == expected, f"KV payload has {len(body)} data bytes, header says {expected}"
        )
        if expected == 0:
            return cls(torch.empty(shape, dtype=dtype))
        data = torch.frombuffer(bytearray(body), dtype=torch.uint8).view(dtype).reshape(shape)
        return cls(data)


def export_kv(
    cache: PagedKVCache,
    block_table: Sequence[int],
    num_tokens: int,
    *,
    device: str | torch.device = "cpu",
) -> KVPayload:
    """Copy the KV of a sequence's first ``num_tokens`` tokens (addressed by ``block_table``) to
    ``device`` as one contiguous payload."""
    slots = cache.slots(list(block_table), num_tokens)
    return KVPayload(cache.flat().index_select(2, slots).to(device))


def import_kv(cache: PagedKVCache, block_table: Sequence[int], payload: KVPayload) -> None:
    """Write ``payload`` as the first ``payload.num_tokens`` tokens of the sequence whose blocks are
    ``block_table`` in ``cache`` (converting to the cache's dtype and device)."""
    _, _, _, kvh, hd = payload.data.shape
    require(
        payload.data.shape[0] == cache.num_layers
        and kvh == cache.num_kv_heads
        and hd == cache.head_dim,
        f"KV payload {tuple(payload.data.shape)} does not fit a cache of "
        f"{cache.num_layers} layers, "
        f"{cache.num_kv_heads} KV heads, head_dim {cache.head_dim}",
    )
    slots = cache.slots(list(block_table), payload.num_tokens)
    cache.flat().index_copy_(2, slots, payload.data.to(device=cache.device, dtype=cache.dtype))
    cache.mark_written()


def export_blocks(cache: PagedKVCache, block_ids: Sequence[int]) -> torch.Tensor:
    """Copy whole blocks: [num_layers, 2, len(block_ids), block_size, num_kv_heads, head_dim]."""
    return cache.data.index_select(2, _block_tensor(cache, block_ids))


def import_blocks(cache: PagedKVCache, block_ids: Sequence[int], blocks: torch.Tensor) -> None:
    """Write blocks from :func:`export_blocks` (same block size) into ``block_ids`` of ``cache``."""
    expected = (
        cache.num_layers,
        2,
        len(block_ids),
        cache.block_size,
        cache.num_kv_heads,
        cache.head_dim,
    )
    require(
        tuple(blocks.shape) == expected,
        f"KV blocks have shape {tuple(blocks.shape)}, expected {expected}",
    )
    cache.data.index_copy_(
        2, _block_tensor(cache, block_ids), blocks.to(device=cache.device, dtype=cache.dtype)
    )
    cache.mark_written()


def _block_tensor(cache: PagedKVCache, block_ids: Sequence[int]) -> torch.Tensor:
    ids = torch.tensor(list(block_ids), dtype=torch.int64)
    if ids.numel():
        require(
            int(ids.min()) >= 0 and int(ids.max()) < cache.num_blocks,
            f"block id out of range [0, {cache.num_blocks})",
        )
    return ids.to(cache.device)
