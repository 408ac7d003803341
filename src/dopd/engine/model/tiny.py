"""``dopd-tiny``: the built-in model, a small Llama with seeded random weights and a byte tokenizer.

It needs no download: weights come from ``torch.Generator`` with a fixed seed on CPU in float32,
so every machine builds the same model. :func:`write_random_checkpoint` writes it (or any small
random config) as a Hugging Face folder, so tests and benchmarks exercise the real loading path
and transformers can load the same weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from dopd.engine.model.llama import LlamaModel
from dopd.engine.model.loader import LoadedModel, load_checkpoint, resolve_dtype, save_checkpoint
from dopd.engine.model.model_config import ModelConfig, RopeConfig
from dopd.engine.model.tokenizer import Tokenizer, byte_level_tokenizer
from dopd.errors import require
from dopd.registry import Registry

TINY_NAME = "dopd-tiny"
TINY_SEED = 20251125
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, PAD, "<|system|>", "<|user|>", "<|assistant|>")
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' ~ message['role']) }}"
    "{% endif %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

TINY_CONFIG = ModelConfig(
    architecture="LlamaForCausalLM",
    vocab_size=256 + len(SPECIAL_TOKENS),
    hidden_size=256,
    intermediate_size=688,
    num_layers=4,
    num_heads=8,
    num_kv_heads=4,
    head_dim=32,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    rope=RopeConfig(theta=10000.0),
    tie_word_embeddings=False,
    bos_token_id=256,
    eos_token_ids=(257,),
    pad_token_id=258,
    torch_dtype="float32",
)


def tiny_tokenizer() -> Tokenizer:
    """The byte tokenizer of dopd-tiny: ids 0-255 are bytes, then the special tokens; BOS first."""
    return Tokenizer(
        byte_level_tokenizer(SPECIAL_TOKENS, BOS),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=TINY_CHAT_TEMPLATE,
    )


def random_hf_state_dict(
    config: ModelConfig, seed: int = TINY_SEED, std: float = 0.02
) -> dict[str, torch.Tensor]:
    """Seeded random float32 weights for ``config`` under Hugging Face names.

    Matrices and embeddings are N(0, std^2), norm weights 1 + N(0, 0.1^2), biases N(0, 0.1^2).
    Tensors are drawn in sorted name order from one CPU generator, so the result is the same on
    every machine for a given (config, seed).
    """
    shapes = _hf_shapes(config)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name in sorted(shapes):
        noise = torch.randn(shapes[name], generator=gen, dtype=torch.float32)
        if name.endswith("norm.weight"):
            out[name] = 1.0 + 0.1 * noise
        elif name.endswith(".bias"):
            out[name] = 0.1 * noise
        else:
            out[name] = std * noise
    return out


def _hf_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    h, d, f = c.hidden_size, c.head_dim, c.intermediate_size
    qd, kvd = c.num_heads * d, c.num_kv_heads * d
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (c.vocab_size, h),
        "model.norm.weight": (h,),
    }
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, h)
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        a, m = p + "self_attn.", p + "mlp."
        shapes.update(
            {
                a + "q_proj.weight": (qd, h),
                a + "k_proj.weight": (kvd, h),
                a + "v_proj.weight": (kvd, h),
                a + "o_proj.weight": (h, qd),
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
                m + "gate_proj.weight": (f, h),
                m + "up_proj.weight": (f, h),
                m + "down_proj.weight": (h, f),
            }
        )
        if c.qkv_bias:
            shapes.update(
                {a + "q_proj.bias": (qd,), a + "k_proj.bias": (kvd,), a + "v_proj.bias": (kvd,)}
            )
        if c.o_bias:
            shapes[a + "o_proj.bias"] = (h,)
        if c.mlp_bias:
            shapes.update(
                {m + "gate_proj.bias": (f,), m + "up_proj.bias": (f,), m + "down_proj.bias": (h,)}
            )
    return shapes


def build_tiny(
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    seed: int = TINY_SEED,
) -> LoadedModel:
    """dopd-tiny in memory: :data:`TINY_CONFIG` with :func:`random_hf_state_dict` weights."""
    model = LlamaModel.from_hf_state_dict(
        TINY_CONFIG,
        random_hf_state_dict(TINY_CONFIG, seed),
        device=device,
        dtype=resolve_dtype(dtype, device),
    )
    return LoadedModel(name=TINY_NAME, model=model, tokenizer=tiny_tokenizer(), path=None)


def write_random_checkpoint(
    folder: str | Path,
    config: ModelConfig = TINY_CONFIG,
    *,
    seed: int = TINY_SEED,
    tokenizer: Tokenizer | None = None,
) -> Path:
    """Write ``config`` with seeded random weights as an HF folder (config, safetensors, tokenizer).

    The tokenizer defaults to dopd-tiny's byte tokenizer, which needs ``config.vocab_size`` >= 262.
    With the defaults this writes dopd-tiny itself.
    """
    tok = tokenizer if tokenizer is not None else tiny_tokenizer()
    return save_checkpoint(folder, config, random_hf_state_dict(config, seed), tok)


BUILTIN_MODELS: Registry[Callable[..., LoadedModel]] = Registry("built-in model")
BUILTIN_MODELS.register(TINY_NAME, build_tiny)


def load_model(
    name_or_path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> LoadedModel:
    """A built-in model by name (``dopd-tiny``) or a checkpoint folder by path."""
    name = str(name_or_path)
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS.get(name)(device=device, dtype=dtype)
    path = Path(name_or_path)
    require(
        path.exists(),
        f"unknown model {name!r}: not a built-in model ({', '.join(BUILTIN_MODELS.names())}) "
        "and no such folder",
    )
    return load_checkpoint(path, device=device, dtype=dtype)
