"""Model catalog: the transformer shapes the latency model and KV sizing need.

Figures come from each model's published Hugging Face ``config.json``
(``num_hidden_layers``, ``hidden_size``, ``num_attention_heads``, ``num_key_value_heads``,
``intermediate_size`` / ``ffn_dim``, ``vocab_size``, ``max_position_embeddings``,
``tie_word_embeddings``); the parameter count is computed from these shapes, so it is a check on
the figures (Llama-3-8B gives 8.03e9, Llama-2-70B 68.98e9, OPT-13B 12.85e9).

Look-ups go through :data:`MODELS` (case-insensitive; unknown names raise ``DopdError``).
"""

from __future__ import annotations

from dataclasses import dataclass

from dopd.errors import require
from dopd.registry import Registry


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Shapes of a decoder-only transformer.

    ``gated_mlp``: SwiGLU-style MLP with three ``hidden x ffn`` matrices (Llama, Qwen, Mistral)
    rather than two (OPT). ``linear_bias``: every linear layer has a bias (OPT); ``qkv_bias``: only
    the q/k/v projections do (Qwen2). ``layer_norm``: LayerNorm with weight and bias rather than
    RMSNorm. ``learned_positions``: rows of a learned position table (OPT: max_context + 2), 0 for
    RoPE. ``dtype_bytes``: bytes per weight and KV element (2 for BF16/FP16).
    """

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    gated_mlp: bool
    max_context: int
    dtype_bytes: int = 2
    tie_embeddings: bool = False
    linear_bias: bool = False
    qkv_bias: bool = False
    layer_norm: bool = False
    learned_positions: int = 0

    def __post_init__(self) -> None:
        for field_name in ("layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "vocab",
                           "max_context", "dtype_bytes"):
            value = getattr(self, field_name)
            require(value >= 1, f"model {self.name!r}: {field_name} must be >= 1, got {value}")
        require(self.heads % self.kv_heads == 0,
                f"model {self.name!r}: heads ({self.heads}) must be a multiple of kv_heads "
                f"({self.kv_heads})")

    @property
    def q_dim(self) -> int:
        """Width of the attention output (heads x head_dim)."""
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of the key (or value) projection (kv_heads x head_dim)."""
        return self.kv_heads * self.head_dim

    @property
    def matmul_params_per_layer(self) -> int:
        """Weights of one layer's matrix multiplies (q, k, v, o and MLP); no biases or norms."""
        attention = self.hidden * (self.q_dim + 2 * self.kv_dim) + self.q_dim * self.hidden
        mlp = (3 if self.gated_mlp else 2) * self.hidden * self.ffn
        return attention + mlp

    @property
    def matmul_params(self) -> int:
        """Matrix weights of all layers: each token costs 2 FLOPs per one (lm_head excluded)."""
        return self.layers * self.matmul_params_per_layer

    @property
    def lm_head_params(self) -> int:
        """Weights of the output projection (vocab x hidden), shared or not with the embedding."""
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        """Total parameter count: embeddings, layers (with biases and norms), final norm, head."""
        norm = (2 if self.layer_norm else 1) * self.hidden
        bias = 0
        if self.linear_bias:
            bias = self.q_dim + 2 * self.kv_dim + self.hidden
            bias += (2 if self.gated_mlp else 1) * self.ffn + self.hidden
        elif self.qkv_bias:
            bias = self.q_dim + 2 * self.kv_dim
        per_layer = self.matmul_params_per_layer + bias + 2 * norm
        embed = (self.vocab + self.learned_positions) * self.hidden
        head = 0 if self.tie_embeddings else self.lm_head_params
        return embed + self.layers * per_layer + norm + head

    @property
    def weight_bytes(self) -> int:
        """Bytes of all weights at ``dtype_bytes`` each."""
        return self.params * self.dtype_bytes

    @property
    def streamed_weight_bytes(self) -> int:
        """Weight bytes one forward step reads: everything but the embedding rows not looked up.

        The embedding table is gathered, not streamed; the lm_head matrix is read in full (even
        when it is the tied embedding table).
        """
        embed = (self.vocab + self.learned_positions) * self.hidden
        head = 0 if self.tie_embeddings else self.lm_head_params
        return (self.params - embed - head + self.lm_head_params) * self.dtype_bytes


MODELS: Registry[ModelSpec] = Registry("model")


def _llama(name: str, layers: int, hidden: int, heads: int, kv_heads: int, ffn: int, vocab: int,
           max_context: int, *aliases: str, qkv_bias: bool = False) -> None:
    spec = ModelSpec(name, layers, hidden, heads, kv_heads, hidden // heads, ffn, vocab,
                     gated_mlp=True, max_context=max_context, qkv_bias=qkv_bias)
    MODELS.register(name, spec)
    for alias in aliases:
        MODELS.register(alias, spec)


def _opt(name: str, layers: int, hidden: int, heads: int, *aliases: str) -> None:
    spec = ModelSpec(name, layers, hidden, heads, heads, hidden // heads, 4 * hidden, 50272,
                     gated_mlp=False, max_context=2048, tie_embeddings=True, linear_bias=True,
                     layer_norm=True, learned_positions=2048 + 2)
    MODELS.register(name, spec)
    for alias in aliases:
        MODELS.register(alias, spec)


_llama("llama-2-7b", 32, 4096, 32, 32, 11008, 32000, 4096, "meta-llama/llama-2-7b-hf")
_llama("llama-2-13b", 40, 5120, 40, 40, 13824, 32000, 4096, "meta-llama/llama-2-13b-hf")
_llama("llama-2-70b", 80, 8192, 64, 8, 28672, 32000, 4096, "meta-llama/llama-2-70b-hf")
_llama("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, 8192, "meta-llama/meta-llama-3-8b")
_llama("llama-3-70b", 80, 8192, 64, 8, 28672, 128256, 8192, "meta-llama/meta-llama-3-70b")
_llama("llama-3.1-8b", 32, 4096, 32, 8, 14336, 128256, 131072, "meta-llama/llama-3.1-8b")
_llama("llama-3.1-70b", 80, 8192, 64, 8, 28672, 128256, 131072, "meta-llama/llama-3.1-70b")
_llama("qwen2.5-7b", 28, 3584, 28, 4, 18944, 152064, 32768, "qwen/qwen2.5-7b-instruct",
       qkv_bias=True)
_llama("qwen2.5-32b", 64, 5120, 40, 8, 27648, 152064, 32768, "qwen/qwen2.5-32b-instruct",
       qkv_bias=True)
_llama("qwen2.5-72b", 80, 8192, 64, 8, 29568, 152064, 32768, "qwen/qwen2.5-72b-instruct",
       qkv_bias=True)
_llama("mistral-7b", 32, 4096, 32, 8, 14336, 32000, 32768, "mistralai/mistral-7b-v0.1")
_opt("opt-13b", 40, 5120, 40, "facebook/opt-13b")
_opt("opt-66b", 64, 9216, 72, "facebook/opt-66b")
_opt("opt-175b", 96, 12288, 96)


def get_model(model: str | ModelSpec) -> ModelSpec:
    """Return the catalog entry named ``model`` (case-insensitive) or ``model`` itself if a spec."""
    if isinstance(model, ModelSpec):
        return model
    return MODELS.get(model)


def model_names() -> list[str]:
    """Canonical model names (aliases excluded), sorted."""
    return sorted({spec.name for _, spec in MODELS.items()})
