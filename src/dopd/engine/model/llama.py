"""The Llama-family decoder (Llama 2/3, Qwen2/2.5, Mistral) running on a paged KV cache.

One :meth:`LlamaModel.forward` runs a flat batch of :class:`~dopd.engine.model.batch.Segment`:
prefill chunks, decodes, or both. Linear layers, norms and the MLP run on the flat token batch;
attention gathers each segment's cache blocks with one ``index_select`` per layer and group, and
runs one padded, masked ``scaled_dot_product_attention`` per group (all decodes; all multi-token
chunks). Grouped-query attention folds the query heads of a KV head into the query-length axis, so
K/V are never repeated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dopd.engine.model.batch import AttnGroup, BatchMeta, Segment, build_batch
from dopd.engine.model.config import ModelConfig
from dopd.engine.model.paged_cache import DEFAULT_BLOCK_SIZE, PagedKVCache
from dopd.engine.model.rope import RotaryTable, apply_rotary
from dopd.engine.model.staging import DecodeStaging
from dopd.errors import DopdError, require


@dataclass(frozen=True, slots=True)
class LayerWeights:
    """One decoder layer; q/k/v and gate/up projections are fused row-wise."""

    input_norm: torch.Tensor
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor | None
    o_w: torch.Tensor
    o_b: torch.Tensor | None
    post_norm: torch.Tensor
    gate_up_w: torch.Tensor
    gate_up_b: torch.Tensor | None
    down_w: torch.Tensor
    down_b: torch.Tensor | None


class LlamaModel:
    """Inference-only Llama-family decoder on one device and dtype.

    Build it with :meth:`from_hf_state_dict` (Hugging Face tensor names). :meth:`forward` is the
    only compute entry point; it never allocates cache blocks, it only reads and writes the ones
    named by the segments' block tables.
    """

    def __init__(
        self,
        config: ModelConfig,
        embed: torch.Tensor,
        layers: Sequence[LayerWeights],
        final_norm: torch.Tensor,
        lm_head: torch.Tensor,
        *,
        decode_staging: bool | None = None,
    ) -> None:
        self.config = config
        self.embed = embed
        self.layers = tuple(layers)
        self.final_norm = final_norm
        self.lm_head = lm_head
        self.device = embed.device
        self.dtype = embed.dtype
        self.rotary = RotaryTable(config, self.device, self.dtype)
        if decode_staging is None:
            decode_staging = self.device.type == "cpu"
        self.staging: DecodeStaging | None = DecodeStaging() if decode_staging else None

    @classmethod
    def from_hf_state_dict(
        cls,
        config: ModelConfig,
        tensors: Mapping[str, torch.Tensor],
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        decode_staging: bool | None = None,
    ) -> LlamaModel:
        """Build from HF-named tensors (``model.layers.0.self_attn.q_proj.weight`` ...).

        Missing or mis-shaped tensors raise DopdError naming the tensor. Extra tensors
        (e.g. rotary ``inv_freq`` buffers) are ignored. ``decode_staging`` (default: on for CPU,
        off for CUDA) keeps contiguous copies of the running decodes' KV between steps (see
        :mod:`dopd.engine.model.staging`); it trades memory for CPU decode speed.
        """
        device = torch.device(device)
        c = config

        def get(name: str, shape: tuple[int, ...]) -> torch.Tensor:
            if name not in tensors:
                raise DopdError(f"checkpoint lacks tensor {name}")
            t = tensors[name]
            require(
                tuple(t.shape) == shape,
                f"tensor {name} has shape {tuple(t.shape)}, expected {shape}",
            )
            return t.to(device=device, dtype=dtype)

        h, d, f = c.hidden_size, c.head_dim, c.intermediate_size
        qd, kvd = c.num_heads * d, c.num_kv_heads * d
        layers = []
        for i in range(c.num_layers):
            p = f"model.layers.{i}."
            a, m = p + "self_attn.", p + "mlp."
            qkv_w = torch.cat(
                [
                    get(a + "q_proj.weight", (qd, h)),
                    get(a + "k_proj.weight", (kvd, h)),
                    get(a + "v_proj.weight", (kvd, h)),
                ]
            )
            qkv_b = (
                torch.cat(
                    [
                        get(a + "q_proj.bias", (qd,)),
                        get(a + "k_proj.bias", (kvd,)),
                        get(a + "v_proj.bias", (kvd,)),
                    ]
                )
                if c.qkv_bias
                else None
            )
            gate_up_b = (
                torch.cat([get(m + "gate_proj.bias", (f,)), get(m + "up_proj.bias", (f,))])
                if c.mlp_bias
                else None
            )
            layers.append(
                LayerWeights(
                    input_norm=get(p + "input_layernorm.weight", (h,)),
                    qkv_w=qkv_w,
                    qkv_b=qkv_b,
                    o_w=get(a + "o_proj.weight", (h, qd)),
                    o_b=get(a + "o_proj.bias", (h,)) if c.o_bias else None,
                    post_norm=get(p + "post_attention_layernorm.weight", (h,)),
                    gate_up_w=torch.cat(
                        [get(m + "gate_proj.weight", (f, h)), get(m + "up_proj.weight", (f, h))]
                    ),
                    gate_up_b=gate_up_b,
                    down_w=get(m + "down_proj.weight", (h, f)),
                    down_b=get(m + "down_proj.bias", (h,)) if c.mlp_bias else None,
                )
            )
        embed = get("model.embed_tokens.weight", (c.vocab_size, h))
        lm_head = embed if c.tie_word_embeddings else get("lm_head.weight", (c.vocab_size, h))
        final_norm = get("model.norm.weight", (h,))
        return cls(c, embed, layers, final_norm, lm_head, decode_staging=decode_staging)

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under Hugging Face names (fused projections split again), on CPU."""
        c = self.config
        qd, kvd, f = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.intermediate_size
        out: dict[str, torch.Tensor] = {
            "model.embed_tokens.weight": self.embed,
            "model.norm.weight": self.final_norm,
        }
        if not c.tie_word_embeddings:
            out["lm_head.weight"] = self.lm_head
        for i, lw in enumerate(self.layers):
            p = f"model.layers.{i}."
            a, m = p + "self_attn.", p + "mlp."
            for name, part in zip(("q", "k", "v"), lw.qkv_w.split([qd, kvd, kvd]), strict=True):
                out[f"{a}{name}_proj.weight"] = part
            if lw.qkv_b is not None:
                for name, part in zip(("q", "k", "v"), lw.qkv_b.split([qd, kvd, kvd]), strict=True):
                    out[f"{a}{name}_proj.bias"] = part
            out[a + "o_proj.weight"] = lw.o_w
            if lw.o_b is not None:
                out[a + "o_proj.bias"] = lw.o_b
            out[p + "input_layernorm.weight"] = lw.input_norm
            out[p + "post_attention_layernorm.weight"] = lw.post_norm
            gate, up = lw.gate_up_w.split([f, f])
            out[m + "gate_proj.weight"], out[m + "up_proj.weight"] = gate, up
            out[m + "down_proj.weight"] = lw.down_w
            if lw.gate_up_b is not None and lw.down_b is not None:
                gb, ub = lw.gate_up_b.split([f, f])
                out[m + "gate_proj.bias"], out[m + "up_proj.bias"] = gb, ub
                out[m + "down_proj.bias"] = lw.down_b
        return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}

    def make_cache(self, num_blocks: int, block_size: int = DEFAULT_BLOCK_SIZE) -> PagedKVCache:
        """A zeroed paged cache for this model on its device and dtype."""
        return PagedKVCache.for_model(
            self.config, num_blocks, block_size=block_size, dtype=self.dtype, device=self.device
        )

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), weight, self.config.rms_norm_eps)
        return weight * F.rms_norm(x.float(), (x.shape[-1],), None, self.config.rms_norm_eps).to(
            x.dtype
        )

    @torch.inference_mode()
    def forward(self, segments: Sequence[Segment], cache: PagedKVCache) -> torch.Tensor:
        """Run one step; write the new tokens' K/V into ``cache``; return float32 logits [S, vocab].

        Row s holds the logits after the last new token of ``segments[s]``. Segments of one call
        must not write to the same cache slots. Bad segments raise DopdError before any write.
        """
        c = self.config
        require(
            cache.num_layers == c.num_layers
            and cache.num_kv_heads == c.num_kv_heads
            and cache.head_dim == c.head_dim,
            "KV cache shape does not match the model",
        )
        require(
            cache.device == self.device and cache.dtype == self.dtype,
            f"KV cache is {cache.dtype} on {cache.device}, model is {self.dtype} on {self.device}",
        )
        meta = build_batch(
            segments,
            block_size=cache.block_size,
            num_blocks=cache.num_blocks,
            vocab_size=c.vocab_size,
            windows=c.sliding_windows,
            kv_heads=c.num_kv_heads,
            q_groups=c.num_query_groups,
            dtype=self.dtype,
            device=self.device,
        )
        staged = False
        if self.staging is not None:
            decodes = [g for g in meta.groups if g.q_len == 1]
            if decodes:
                staged = self.staging.begin(cache, segments, decodes[0])
            else:
                self.staging.reset()
        try:
            return self._run(meta, cache, staged)
        except BaseException:
            if self.staging is not None:
                self.staging.reset()
            raise

    def _run(self, meta: BatchMeta, cache: PagedKVCache, staged: bool) -> torch.Tensor:
        c = self.config
        cos, sin = self.rotary.cos_sin(meta.positions, meta.seq_lens)
        x = F.embedding(meta.input_ids, self.embed)
        flat = cache.flat()
        t, heads, kv_heads, d = meta.num_tokens, c.num_heads, c.num_kv_heads, c.head_dim
        qk_dim = (heads + kv_heads) * d
        ffn = c.intermediate_size
        for i, lw in enumerate(self.layers):
            h = self._norm(x, lw.input_norm)
            qkv = F.linear(h, lw.qkv_w, lw.qkv_b)
            qk = apply_rotary(qkv[:, :qk_dim].view(t, heads + kv_heads, d), cos, sin)
            k, v = qk[:, heads:], qkv[:, qk_dim:].view(t, kv_heads, d)
            flat[i, 0].index_copy_(0, meta.write_slots, k)
            flat[i, 1].index_copy_(0, meta.write_slots, v)
            attn = self._attention(qk[:, :heads], (k, v), cache, i, meta, staged)
            x = x + F.linear(attn, lw.o_w, lw.o_b)
            h = self._norm(x, lw.post_norm)
            gu = F.linear(h, lw.gate_up_w, lw.gate_up_b)
            x = x + F.linear(F.silu(gu[:, :ffn]) * gu[:, ffn:], lw.down_w, lw.down_b)
        last = self._norm(x.index_select(0, meta.last_index), self.final_norm)
        return F.linear(last, self.lm_head).float()

    def _attention(
        self,
        q: torch.Tensor,
        kv_new: tuple[torch.Tensor, torch.Tensor],
        cache: PagedKVCache,
        layer: int,
        meta: BatchMeta,
        staged: bool,
    ) -> torch.Tensor:
        """Attention output [T, heads * head_dim] of the flat queries ``q`` [T, heads, head_dim].

        ``kv_new`` are the flat new keys/values [T, kv_heads, head_dim] (already in the pool);
        with ``staged`` the decode group reads its KV from the decode staging.
        """
        outs = []
        for g in meta.groups:
            if staged and g.q_len == 1:
                assert self.staging is not None
                k_new, v_new = kv_new
                if g.out_rows is not None:
                    k_new, v_new = (
                        k_new.index_select(0, g.token_index),
                        v_new.index_select(0, g.token_index),
                    )
                k, v = self.staging.layer_kv(cache, layer, g, k_new, v_new)
            else:
                d = self.config.head_dim
                k = cache.k(layer).view(-1, d).index_select(0, g.kv_index)
                v = cache.v(layer).view(-1, d).index_select(0, g.kv_index)
            outs.append((g, self._group_attention(q, k, v, layer, g)))
        if len(outs) == 1 and outs[0][0].out_rows is None:
            return outs[0][1]
        out = q.new_empty(meta.num_tokens, q.shape[1] * q.shape[2])
        for g, o in outs:
            assert g.out_rows is not None and g.out_tokens is not None
            rows = o if g.q_len == 1 else o.index_select(0, g.out_rows)
            out.index_copy_(0, g.out_tokens, rows)
        return out

    def _group_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int, g: AttnGroup
    ) -> torch.Tensor:
        """One padded SDPA call: flat queries ``q``, the group's K/V [S_g, kv_heads, ctx, d]."""
        c = self.config
        n, q_len, kv_heads, d = g.num_segments, g.q_len, c.num_kv_heads, c.head_dim
        groups = c.num_query_groups
        k = k.view(n, kv_heads, g.ctx, d)
        v = v.view(n, kv_heads, g.ctx, d)
        if g.out_rows is None and q_len == 1:
            qg = q.view(n, q_len, kv_heads, groups, d)
        else:
            qg = q.index_select(0, g.token_index).view(n, q_len, kv_heads, groups, d)
        if q_len == 1:
            qh = qg.view(n, kv_heads, groups, d)
        else:
            qh = qg.permute(0, 2, 3, 1, 4).reshape(n, kv_heads, groups * q_len, d)
        o = F.scaled_dot_product_attention(qh, k, v, attn_mask=g.masks[c.sliding_windows[layer]])
        if q_len == 1:
            return o.reshape(n, c.num_heads * d)
        return (
            o.view(n, kv_heads, groups, q_len, d)
            .permute(0, 3, 1, 2, 4)
            .reshape(n * q_len, c.num_heads * d)
        )
