"""The Llama-family decoder (Llama 2/3, Qwen2/2.5, Mistral) running on a paged KV cache.

One :meth:`LlamaModel.forward` runs a flat batch of :class:`~dopd.engine.model.batch.Segment`:
prefill chunks, decodes, or both. Embedding, norms, projections and the MLP run on the flat token
batch with no padding; only attention pads, per group (see :mod:`dopd.engine.model.attention`).
Logits are computed for the last token of each segment only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from dopd.engine.model.attention import layer_attention
from dopd.engine.model.batch import BatchMeta, Segment, build_batch
from dopd.engine.model.model_config import ModelConfig
from dopd.engine.model.paged_cache import DEFAULT_BLOCK_SIZE, PagedKVCache
from dopd.engine.model.rope import RotaryTable, apply_rotary
from dopd.engine.model.staging import DecodeStaging
from dopd.engine.model.weights import ModelWeights, weights_from_hf, weights_to_hf
from dopd.errors import require


class LlamaModel:
    """Inference-only Llama-family decoder on one device and dtype.

    Build it with :meth:`from_hf_state_dict` (Hugging Face tensor names). :meth:`forward` is the
    only compute entry point; it never allocates cache blocks, it only reads and writes the ones
    named by the segments' block tables. ``decode_staging`` (default: on for CPU, off for CUDA)
    keeps contiguous copies of the running decodes' KV between steps (see
    :mod:`dopd.engine.model.staging`): more memory, much less copying per CPU decode step.
    A model is not thread-safe: run one forward at a time.
    """

    def __init__(
        self, config: ModelConfig, weights: ModelWeights, *, decode_staging: bool | None = None
    ) -> None:
        require(
            len(weights.layers) == config.num_layers,
            f"{len(weights.layers)} layers of weights for {config.num_layers} layers",
        )
        self.config = config
        self.weights = weights
        self.device = weights.embed.device
        self.dtype = weights.embed.dtype
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
        """Build from HF-named tensors (see :func:`~dopd.engine.model.weights.weights_from_hf`)."""
        weights = weights_from_hf(config, tensors, device=torch.device(device), dtype=dtype)
        return cls(config, weights, decode_staging=decode_staging)

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under Hugging Face names, on CPU."""
        return weights_to_hf(self.config, self.weights)

    def make_cache(self, num_blocks: int, block_size: int = DEFAULT_BLOCK_SIZE,
                   zeroed: bool = True) -> PagedKVCache:
        """A paged cache for this model on its device and dtype (see :class:`PagedKVCache`
        for ``zeroed``)."""
        return PagedKVCache.for_model(
            self.config, num_blocks, block_size=block_size, dtype=self.dtype, device=self.device,
            zeroed=zeroed,
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
        staging = None
        if self.staging is not None:
            decodes = [g for g in meta.groups if g.q_len == 1]
            if decodes and self.staging.begin(cache, segments, decodes[0]):
                staging = self.staging
            elif not decodes:
                self.staging.reset()
        try:
            return self._run(meta, cache, staging)
        except BaseException:
            if self.staging is not None:
                self.staging.reset()
            raise

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        eps = self.config.rms_norm_eps
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), weight, eps)
        # as transformers: normalise in float32, scale in the activation dtype
        return weight * F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)

    def _run(
        self, meta: BatchMeta, cache: PagedKVCache, staging: DecodeStaging | None
    ) -> torch.Tensor:
        c = self.config
        cos, sin = self.rotary.cos_sin(meta.positions, meta.seq_lens, meta.max_len)
        x = F.embedding(meta.input_ids, self.weights.embed)
        flat = cache.flat()
        t, heads, kv_heads, d = meta.num_tokens, c.num_heads, c.num_kv_heads, c.head_dim
        qk_dim = (heads + kv_heads) * d
        for i, lw in enumerate(self.weights.layers):
            qkv = F.linear(self._norm(x, lw.input_norm), lw.qkv_w, lw.qkv_b)
            qk = apply_rotary(qkv[:, :qk_dim].view(t, heads + kv_heads, d), cos, sin)
            k, v = qk[:, heads:], qkv[:, qk_dim:].view(t, kv_heads, d)
            flat[i, 0].index_copy_(0, meta.write_slots, k)
            flat[i, 1].index_copy_(0, meta.write_slots, v)
            attn = layer_attention(c, qk[:, :heads], k, v, cache, i, meta, staging)
            x = x + F.linear(attn, lw.o_w, lw.o_b)
            h = self._norm(x, lw.post_norm)
            gate = F.silu(F.linear(h, lw.gate_w, lw.gate_b))
            x = x + F.linear(gate.mul_(F.linear(h, lw.up_w, lw.up_b)), lw.down_w, lw.down_b)
        last = self._norm(x.index_select(0, meta.last_index), self.weights.final_norm)
        return F.linear(last, self.weights.lm_head).float()
