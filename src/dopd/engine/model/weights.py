"""Model weights in the layout the forward uses, and their mapping to Hugging Face tensor names.

q/k/v are fused row-wise into one projection (one matmul, and the rotary embedding runs on q and
k together); gate and up stay separate so the SiLU-and-multiply reads contiguous tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from dopd.engine.model.model_config import ModelConfig
from dopd.errors import DopdError, require


@dataclass(frozen=True, slots=True)
class LayerWeights:
    """One decoder layer. ``qkv_w`` is [(heads + 2 * kv_heads) * head_dim, hidden]."""

    input_norm: torch.Tensor
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor | None
    o_w: torch.Tensor
    o_b: torch.Tensor | None
    post_norm: torch.Tensor
    gate_w: torch.Tensor
    gate_b: torch.Tensor | None
    up_w: torch.Tensor
    up_b: torch.Tensor | None
    down_w: torch.Tensor
    down_b: torch.Tensor | None


@dataclass(frozen=True, slots=True)
class ModelWeights:
    """All weights of a model; ``lm_head`` is ``embed`` itself when embeddings are tied."""

    embed: torch.Tensor
    layers: tuple[LayerWeights, ...]
    final_norm: torch.Tensor
    lm_head: torch.Tensor


def weights_from_hf(
    config: ModelConfig,
    tensors: Mapping[str, torch.Tensor],
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> ModelWeights:
    """Convert HF-named tensors (``model.layers.0.self_attn.q_proj.weight`` ...) to ``dtype`` on
    ``device``. Missing or mis-shaped tensors raise DopdError naming the tensor; extra tensors
    (rotary ``inv_freq`` buffers, say) are ignored."""
    c = config

    def get(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in tensors:
            raise DopdError(f"checkpoint lacks tensor {name}")
        t = tensors[name]
        require(
            tuple(t.shape) == shape, f"tensor {name} has shape {tuple(t.shape)}, expected {shape}"
        )
        return t.to(device=device, dtype=dtype).contiguous()

    def opt(name: str, shape: tuple[int, ...], present: bool) -> torch.Tensor | None:
        return get(name, shape) if present else None

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
        qkv_b = None
        if c.qkv_bias:
            qkv_b = torch.cat(
                [
                    get(a + "q_proj.bias", (qd,)),
                    get(a + "k_proj.bias", (kvd,)),
                    get(a + "v_proj.bias", (kvd,)),
                ]
            )
        layers.append(
            LayerWeights(
                input_norm=get(p + "input_layernorm.weight", (h,)),
                qkv_w=qkv_w,
                qkv_b=qkv_b,
                o_w=get(a + "o_proj.weight", (h, qd)),
                o_b=opt(a + "o_proj.bias", (h,), c.o_bias),
                post_norm=get(p + "post_attention_layernorm.weight", (h,)),
                gate_w=get(m + "gate_proj.weight", (f, h)),
                gate_b=opt(m + "gate_proj.bias", (f,), c.mlp_bias),
                up_w=get(m + "up_proj.weight", (f, h)),
                up_b=opt(m + "up_proj.bias", (f,), c.mlp_bias),
                down_w=get(m + "down_proj.weight", (h, f)),
                down_b=opt(m + "down_proj.bias", (h,), c.mlp_bias),
            )
        )
    embed = get("model.embed_tokens.weight", (c.vocab_size, h))
    lm_head = embed if c.tie_word_embeddings else get("lm_head.weight", (c.vocab_size, h))
    return ModelWeights(embed, tuple(layers), get("model.norm.weight", (h,)), lm_head)


def weights_to_hf(config: ModelConfig, weights: ModelWeights) -> dict[str, torch.Tensor]:
    """The inverse of :func:`weights_from_hf`: HF-named contiguous tensors on CPU."""
    c = config
    qd, kvd = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    out: dict[str, torch.Tensor | None] = {
        "model.embed_tokens.weight": weights.embed,
        "model.norm.weight": weights.final_norm,
        "lm_head.weight": None if c.tie_word_embeddings else weights.lm_head,
    }
    for i, lw in enumerate(weights.layers):
        p = f"model.layers.{i}."
        a, m = p + "self_attn.", p + "mlp."
        for name, w in zip("qkv", lw.qkv_w.split([qd, kvd, kvd]), strict=True):
            out[f"{a}{name}_proj.weight"] = w
        if lw.qkv_b is not None:
            for name, b in zip("qkv", lw.qkv_b.split([qd, kvd, kvd]), strict=True):
                out[f"{a}{name}_proj.bias"] = b
        out.update(
            {
                a + "o_proj.weight": lw.o_w,
                a + "o_proj.bias": lw.o_b,
                p + "input_layernorm.weight": lw.input_norm,
                p + "post_attention_layernorm.weight": lw.post_norm,
                m + "gate_proj.weight": lw.gate_w,
                m + "gate_proj.bias": lw.gate_b,
                m + "up_proj.weight": lw.up_w,
                m + "up_proj.bias": lw.up_b,
                m + "down_proj.weight": lw.down_w,
                m + "down_proj.bias": lw.down_b,
            }
        )
    return {k: v.detach().to("cpu").contiguous() for k, v in out.items() if v is not None}
