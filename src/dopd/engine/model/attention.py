"""Attention of one layer over a flat batch of segments, reading K/V from the paged cache.

Per attention group (all decodes; all multi-token chunks) one ``scaled_dot_product_attention``
call runs on padded tensors:

* decodes read their K/V from the decode staging when it serves them, else gather them from the
  pool with one ``index_select`` per K and V into contiguous [S, kv_heads, ctx, head_dim];
* chunks that start a sequence (nothing cached, all the same length) attend over their own new
  K/V with ``is_causal`` and grouped-query support in SDPA, skipping the masked half;
* other chunks gather like decodes and use the group's additive mask.

With an explicit mask, the query heads sharing a KV head are folded into the query-length axis
([S, kv_heads, groups * q_len, head_dim]), so K/V are never repeated per query head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dopd.engine.model.batch import AttnGroup, BatchMeta
from dopd.engine.model.model_config import ModelConfig
from dopd.engine.model.paged_cache import PagedKVCache
from dopd.engine.model.staging import DecodeStaging


def layer_attention(
    config: ModelConfig,
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cache: PagedKVCache,
    layer: int,
    meta: BatchMeta,
    staging: DecodeStaging | None,
) -> torch.Tensor:
    """Attention output [T, heads * head_dim] of the flat queries ``q`` [T, heads, head_dim].

    ``k_new``/``v_new`` [T, kv_heads, head_dim] are this step's keys/values, already written to
    ``cache``; ``staging`` is given when it serves this forward's decode group.
    """
    window = config.sliding_windows[layer]
    d = config.head_dim
    outs = []
    for g in meta.groups:
        mask = g.masks[window]
        if g.q_len == 1 and staging is not None:
            kn, vn = k_new, v_new
            if g.out_rows is not None:
                kn, vn = kn.index_select(0, g.token_index), vn.index_select(0, g.token_index)
            k, v = staging.layer_kv(cache, layer, g, kn, vn)
        elif g.q_len > 1 and mask is None:
            kn, vn = k_new, v_new
            if g.out_rows is not None:
                kn, vn = kn.index_select(0, g.token_index), vn.index_select(0, g.token_index)
            k = kn.view(g.num_segments, g.q_len, -1, d).transpose(1, 2)
            v = vn.view(g.num_segments, g.q_len, -1, d).transpose(1, 2)
        else:
            k = cache.k(layer).view(-1, d).index_select(0, g.kv_index)
            v = cache.v(layer).view(-1, d).index_select(0, g.kv_index)
            k = k.view(g.num_segments, -1, g.ctx, d)
            v = v.view(g.num_segments, -1, g.ctx, d)
        outs.append((g, _group_attention(config, q, k, v, g, mask)))
    if len(outs) == 1 and outs[0][0].out_rows is None:
        return outs[0][1]
    out = q.new_empty(meta.num_tokens, q.shape[1] * q.shape[2])
    for g, o in outs:
        assert g.out_rows is not None and g.out_tokens is not None
        rows = o if g.q_len == 1 else o.index_select(0, g.out_rows)
        out.index_copy_(0, g.out_tokens, rows)
    return out


def _group_attention(
    config: ModelConfig,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: AttnGroup,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """One SDPA call for group ``g``; K/V [S_g, kv_heads, ctx, d] -> [S_g * q_len, heads * d]."""
    n, q_len, d = g.num_segments, g.q_len, config.head_dim
    kv_heads, groups, width = config.num_kv_heads, config.num_query_groups, config.num_heads * d
    if g.out_rows is None:
        qg = q.view(n, q_len, kv_heads, groups, d)
    else:
        qg = q.index_select(0, g.token_index).view(n, q_len, kv_heads, groups, d)
    if q_len == 1:
        o = F.scaled_dot_product_attention(qg.view(n, kv_heads, groups, d), k, v, attn_mask=mask)
        return o.reshape(n, width)
    if mask is None:
        qh = qg.view(n, q_len, kv_heads * groups, d).transpose(1, 2)
        o = F.scaled_dot_product_attention(qh, k, v, is_causal=True, enable_gqa=groups > 1)
        return o.transpose(1, 2).reshape(n * q_len, width)
    qh = qg.permute(0, 2, 3, 1, 4).reshape(n, kv_heads, groups * q_len, d)
    o = F.scaled_dot_product_attention(qh, k, v, attn_mask=mask)
    return o.view(n, kv_heads, groups, q_len, d).permute(0, 3, 1, 2, 4).reshape(n * q_len, width)
