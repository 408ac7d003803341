"""The plain-data input of a paged forward (:class:`Segment`) and its tensor metadata.

A forward runs a flat batch of segments. Each segment is one sequence's step: the tokens already
in the cache (``num_cached``), the new token ids to run, and the block table that addresses the
sequence's KV. Prefill chunks (many new tokens), decodes (one new token) and mixes of both go in
one call. :func:`build_batch` turns the segments into the index tensors every layer reuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dopd.errors import require


@dataclass(frozen=True, slots=True)
class Segment:
    """One sequence's step in a forward.

    ``block_table[i]`` is the cache block that holds the sequence's tokens
    ``[i * block_size, (i + 1) * block_size)``; it must cover ``num_cached + len(token_ids)``
    tokens. ``token_ids`` are written at positions ``num_cached ...``.
    """

    block_table: Sequence[int]
    num_cached: int
    token_ids: Sequence[int]

    @property
    def total_len(self) -> int:
        return self.num_cached + len(self.token_ids)


@dataclass(frozen=True, slots=True)
class AttnGroup:
    """Segments attended in one padded SDPA call (all decodes, or all multi-token chunks).

    ``token_index`` [S_g * q_len] picks the group's queries from the flat tokens (padding repeats
    a valid token). ``kv_index`` [S_g * kv_heads * ctx] picks rows of a layer's pool viewed as
    [num_blocks * block_size * kv_heads, head_dim] so that the gathered keys are contiguous
    [S_g, kv_heads, ctx, head_dim] (ctx = longest segment; padding reads slot 0, masked).
    ``masks`` maps a sliding window (None: full attention) to the additive float mask
    [S_g, 1, rows, ctx] (0 or -inf), rows = q_len for decodes, q_groups * q_len otherwise. It is
    None when no mask is needed: decodes of equal length, or chunks that all start their
    sequences with the same length (plain causal attention over their own tokens), provided the
    window does not cut into the context.
    ``members`` are the group's segment indices in the batch.
    ``out_rows`` / ``out_tokens`` scatter the valid rows of the padded output back to flat token
    order; both None when the group is the whole batch in flat order without padding.
    """

    members: tuple[int, ...]
    num_segments: int
    q_len: int
    ctx: int
    token_index: torch.Tensor
    kv_index: torch.Tensor
    masks: dict[int | None, torch.Tensor | None]
    out_rows: torch.Tensor | None
    out_tokens: torch.Tensor | None


@dataclass(frozen=True, slots=True)
class BatchMeta:
    """Index tensors of one forward, shared by every layer."""

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    seq_lens: torch.Tensor  # [T] total length of each token's segment after this step
    write_slots: torch.Tensor  # [T] flat cache slot (block * block_size + offset) of each new token
    last_index: torch.Tensor  # [S] flat index of each segment's last token
    groups: tuple[AttnGroup, ...]
    num_tokens: int
    max_len: int  # longest segment after this step


def build_batch(
    segments: Sequence[Segment],
    *,
    block_size: int,
    num_blocks: int,
    vocab_size: int,
    windows: Sequence[int | None],
    kv_heads: int,
    q_groups: int = 1,
    dtype: torch.dtype = torch.float32,
    device: torch.device,
) -> BatchMeta:
    """Validate ``segments`` against the cache and vocabulary and build the forward's metadata.

    ``kv_heads`` is the cache's KV head count; ``q_groups`` (query heads per KV head) shapes the
    masks of multi-token groups, whose query rows are ordered (head in group, position). Raises
    DopdError for an empty batch or segment, a negative ``num_cached``, a block table too short
    for the segment, or a block id / token id out of range.
    """
    require(len(segments) > 0, "a forward needs at least one segment")
    ids: list[int] = []
    positions: list[int] = []
    seq_lens: list[int] = []
    slots: list[int] = []
    last: list[int] = []
    decodes: list[int] = []
    chunks: list[int] = []
    starts: list[int] = []
    all_blocks: list[int] = []
    for s, seg in enumerate(segments):
        n_new = len(seg.token_ids)
        require(n_new > 0, f"segment {s} has no new tokens")
        require(seg.num_cached >= 0, f"segment {s} has negative num_cached {seg.num_cached}")
        total = seg.num_cached + n_new
        table = seg.block_table
        require(
            len(table) * block_size >= total,
            f"segment {s}: block table of {len(table)} blocks cannot hold {total} tokens",
        )
        all_blocks.extend(table[: (total + block_size - 1) // block_size])
        starts.append(len(ids))
        ids.extend(seg.token_ids)
        if n_new == 1:
            p = seg.num_cached
            positions.append(p)
            slots.append(table[p // block_size] * block_size + p % block_size)
            decodes.append(s)
        else:
            positions.extend(range(seg.num_cached, total))
            slots.extend(
                table[p // block_size] * block_size + p % block_size
                for p in range(seg.num_cached, total)
            )
            chunks.append(s)
        seq_lens.extend([total] * n_new)
        last.append(len(ids) - 1)
    lo, hi = min(all_blocks), max(all_blocks)
    require(
        lo >= 0 and hi < num_blocks,
        f"block id {hi if hi >= num_blocks else lo} out of range [0, {num_blocks})",
    )
    require(min(ids) >= 0 and max(ids) < vocab_size, f"token id out of range [0, {vocab_size})")

    def as_tensor(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=device)

    groups = []
    distinct_windows = tuple(dict.fromkeys(windows))
    single = not (decodes and chunks)
    for members in (decodes, chunks):
        if members:
            groups.append(
                _group(
                    segments,
                    members,
                    starts,
                    (block_size, kv_heads, q_groups),
                    distinct_windows,
                    (dtype, device),
                    single,
                )
            )
    return BatchMeta(
        input_ids=as_tensor(ids),
        positions=as_tensor(positions),
        seq_lens=as_tensor(seq_lens),
        write_slots=as_tensor(slots),
        last_index=as_tensor(last),
        groups=tuple(groups),
        num_tokens=len(ids),
        max_len=max(seq_lens),
    )


def _group(
    segments: Sequence[Segment],
    members: list[int],
    starts: list[int],
    shape: tuple[int, int, int],
    windows: tuple[int | None, ...],
    where: tuple[torch.dtype, torch.device],
    single: bool,
) -> AttnGroup:
    block_size, kv_heads, q_groups = shape
    dtype, device = where
    n = len(members)
    q_len = max(len(segments[s].token_ids) for s in members)
    ctx = max(segments[s].total_len for s in members)
    n_blocks = (ctx + block_size - 1) // block_size
    token_index: list[int] = []
    block_index: list[int] = []
    cached: list[int] = []
    new: list[int] = []
    out_rows: list[int] = []
    out_tokens: list[int] = []
    for g, s in enumerate(members):
        seg = segments[s]
        n_new = len(seg.token_ids)
        used = (seg.total_len + block_size - 1) // block_size
        block_index.extend(seg.block_table[:used])
        block_index.extend([0] * (n_blocks - used))
        start = starts[s]
        token_index.extend(range(start, start + n_new))
        token_index.extend([start + n_new - 1] * (q_len - n_new))
        out_rows.extend(range(g * q_len, g * q_len + n_new))
        out_tokens.extend(range(start, start + n_new))
        cached.append(seg.num_cached)
        new.append(n_new)
    t_cached = torch.tensor(cached, dtype=torch.int64, device=device)
    t_new = torch.tensor(new, dtype=torch.int64, device=device)
    q_off = torch.arange(q_len, device=device)
    # padded query rows reuse the segment's last position so every row sees at least one key
    q_pos = t_cached[:, None] + torch.minimum(q_off[None, :], (t_new - 1)[:, None])
    k_pos = torch.arange(ctx, device=device)
    blocks = torch.tensor(block_index, dtype=torch.int64, device=device).view(n, n_blocks)
    slot = blocks[:, k_pos // block_size] * block_size + k_pos % block_size
    heads = torch.arange(kv_heads, device=device)
    kv_index = (slot[:, None, :] * kv_heads + heads[None, :, None]).reshape(-1)
    causal = k_pos[None, None, :] <= q_pos[:, :, None]
    # no mask needed: chunks that start their sequences together (causal SDPA), or decodes of
    # sequences of equal length, as long as the window does not cut into the context
    # the only group, unpadded: its padded order is the flat token order
    whole = single and min(new) == q_len
    fresh = q_len > 1 and max(cached) == 0 and min(new) == q_len
    level = q_len == 1 and min(cached) == ctx - 1
    masks: dict[int | None, torch.Tensor | None] = {}
    for w in windows:
        if (fresh or level) and (w is None or w >= ctx):
            masks[w] = None
            continue
        allowed = causal if w is None else causal & (k_pos[None, None, :] > q_pos[:, :, None] - w)
        m = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(
            ~allowed, -torch.inf
        )
        if q_len > 1 and q_groups > 1:
            m = m[:, None].expand(n, q_groups, q_len, ctx).reshape(n, q_groups * q_len, ctx)
        masks[w] = m[:, None, :, :]
    as_t = torch.tensor
    return AttnGroup(
        members=tuple(members),
        num_segments=n,
        q_len=q_len,
        ctx=ctx,
        token_index=as_t(token_index, dtype=torch.int64, device=device),
        kv_index=kv_index,
        masks=masks,
        out_rows=None if whole else as_t(out_rows, dtype=torch.int64, device=device),
        out_tokens=None if whole else as_t(out_tokens, dtype=torch.int64, device=device),
    )
