"""Decode staging: contiguous copies of a decode batch's KV, reused across consecutive steps.

Gathering every decode sequence's whole KV out of the paged pool on every step moves the whole
context through memory once per step, which dominates CPU decode. When consecutive forwards decode
the same sequences in the same order (the steady state of a decode batch), the gathered K/V of
step t+1 equal those of step t plus one token per sequence. :class:`DecodeStaging` keeps them, one
[S, kv_heads, capacity, head_dim] pair per layer, and appends the new token in place; the paged
pool stays the source of truth (every forward still writes it) and the staging is rebuilt from it
whenever anything else happens.

Invariant (checked, not assumed): the staging is used only when the previous forward on the same
cache had a decode group of the same sequences, each now continuing at exactly the length it had
then, with unchanged block tables, and the cache has not been written outside forward since
(``PagedKVCache.version``). Any other forward, or an exception, drops it.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch

from dopd.engine.model.batch import AttnGroup, Segment
from dopd.engine.model.paged_cache import PagedKVCache

DEFAULT_HEADROOM = 128
# a staging may always use this many elements, even beyond the size of a small pool
SMALL_STAGING_ELEMENTS = 1 << 24


class DecodeStaging:
    """Per-model staging of the decode group's KV (see the module docstring).

    Use: :meth:`begin` once per forward (before the layers), then :meth:`layer_kv` once per layer
    for the decode group when :meth:`begin` returned True; :meth:`reset` on any other forward.
    ``headroom`` is the number of steps a staging can grow before it is rebuilt.
    """

    def __init__(self, headroom: int = DEFAULT_HEADROOM) -> None:
        self.headroom = headroom
        self.hits = 0
        self.rebuilds = 0
        self.reset()

    def reset(self) -> None:
        """Forget the staged sequences and free the buffers."""
        self._cache: weakref.ref[PagedKVCache] | None = None
        self._version = -1
        self._tables: list[tuple[int, ...]] = []
        self._totals: list[int] = []
        self._k: list[torch.Tensor] = []
        self._v: list[torch.Tensor] = []
        self._capacity = 0
        self._base = torch.empty(0, dtype=torch.int64)
        self._rows: torch.Tensor | None = None

    def begin(self, cache: PagedKVCache, segments: Sequence[Segment], group: AttnGroup) -> bool:
        """Prepare this forward's decode ``group`` (of ``segments``); True when staging serves it.

        A staging never holds more elements than the cache's whole pool (or
        :data:`SMALL_STAGING_ELEMENTS` for small pools), so it at most doubles the KV memory: the
        headroom shrinks to fit, and without room for one more step this returns False.
        """
        members = [segments[s] for s in group.members]
        block = cache.block_size
        if self._continues(cache, members):
            pos = torch.tensor([m.num_cached for m in members], dtype=torch.int64)
            # rows (sequence, kv head, position) of a layer's buffer viewed as [-1, head_dim]
            self._rows = (self._base + pos[:, None]).reshape(-1).to(cache.device)
            for i, m in enumerate(members):
                self._totals[i] += 1
                if self._totals[i] > len(self._tables[i]) * block:
                    self._tables[i] = tuple(m.block_table[: -(-self._totals[i] // block)])
            self.hits += 1
            return True
        self.reset()
        per_position = 2 * len(members) * cache.num_kv_heads * cache.head_dim * cache.num_layers
        budget = max(cache.data.numel(), SMALL_STAGING_ELEMENTS)
        capacity = min(group.ctx + self.headroom, budget // per_position)
        if capacity <= group.ctx:
            return False
        self._cache = weakref.ref(cache)
        self._version = cache.version
        self._totals = [m.total_len for m in members]
        self._tables = [tuple(m.block_table[: -(-m.total_len // block)]) for m in members]
        self._capacity = capacity
        heads = cache.num_kv_heads
        self._base = (
            torch.arange(len(members) * heads, dtype=torch.int64).view(-1, heads) * capacity
        )
        self.rebuilds += 1
        return True

    def _continues(self, cache: PagedKVCache, members: list[Segment]) -> bool:
        if self._cache is None or self._cache() is not cache or self._version != cache.version:
            return False
        if len(members) != len(self._totals) or len(self._k) != cache.num_layers:
            return False
        for m, total, table in zip(members, self._totals, self._tables, strict=True):
            if m.num_cached != total or total >= self._capacity:
                return False
            if tuple(m.block_table[: len(table)]) != table:
                return False
        return True

    def layer_kv(
        self,
        cache: PagedKVCache,
        layer: int,
        group: AttnGroup,
        k_new: torch.Tensor,
        v_new: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V [S, kv_heads, group.ctx, head_dim] of the decode group at ``layer``.

        ``k_new``/``v_new`` [S, kv_heads, head_dim] are this step's keys/values of the group
        (already written to the pool). Layers must be visited in order 0, 1, ... once per forward.
        """
        n, ctx, d = group.num_segments, group.ctx, cache.head_dim
        if self._rows is not None:
            k, v = self._k[layer], self._v[layer]
            k.view(-1, d).index_copy_(0, self._rows, k_new.reshape(-1, d))
            v.view(-1, d).index_copy_(0, self._rows, v_new.reshape(-1, d))
        else:
            shape = (n, cache.num_kv_heads, self._capacity, d)
            k = torch.empty(shape, dtype=cache.dtype, device=cache.device)
            v = torch.empty(shape, dtype=cache.dtype, device=cache.device)
            index = group.kv_index
            k[:, :, :ctx] = cache.k(layer).view(-1, d).index_select(0, index).view(n, -1, ctx, d)
            v[:, :, :ctx] = cache.v(layer).view(-1, d).index_select(0, index).view(n, -1, ctx, d)
            # masked positions must hold finite values: 0 * NaN would poison the softmax
            k[:, :, ctx:].zero_()
            v[:, :, ctx:].zero_()
            self._k.append(k)
            self._v.append(v)
        return k[:, :, :ctx], v[:, :, :ctx]
