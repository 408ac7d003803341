"""Configuration of Llama-family models (Llama 2/3, Qwen2/2.5, Mistral), parsed from config.json.

:class:`ModelConfig` is the one description of the network that every other module of the model
package reads. :meth:`ModelConfig.from_hf_dict` accepts both the classic layout (``rope_theta`` and
``rope_scaling`` at the top level) and the ``rope_parameters`` layout written by transformers >= 5.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dopd.errors import DopdError, require

SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "MistralForCausalLM": "mistral",
}
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


@dataclass(frozen=True, slots=True)
class RopeConfig:
    """Rotary position embedding parameters (the fields of HF's ``rope_parameters``).

    ``rope_type`` is one of :data:`ROPE_TYPES`. ``factor`` is the scaling factor of the scaled
    types; ``original_max_position_embeddings`` is the pretraining context of ``llama3``/``yarn``.
    ``dynamic`` (NTK) stretches the base once a sequence exceeds ``max_position_embeddings``; the
    frequencies of a token depend on its own sequence's length when it is written to the cache.
    """

    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int | None = None
    attention_factor: float | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True

    def __post_init__(self) -> None:
        require(
            self.rope_type in ROPE_TYPES,
            f"unsupported rope type {self.rope_type!r} (supported: {', '.join(ROPE_TYPES)})",
        )
        require(
            self.theta > 0 and math.isfinite(self.theta),
            f"rope_theta must be > 0, got {self.theta}",
        )
        require(self.factor > 0, f"rope scaling factor must be > 0, got {self.factor}")
        if self.rope_type == "llama3":
            require(
                self.high_freq_factor > self.low_freq_factor > 0,
                "llama3 rope needs high_freq_factor > low_freq_factor > 0",
            )


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Shape and numerics of a Llama-family decoder.

    ``sliding_windows`` holds one entry per layer: None for full attention, else the window W (a
    query at position p sees keys at positions > p - W, as in transformers).
    ``qkv_bias``/``o_bias``/``mlp_bias`` say which projections carry a bias (Qwen2: q/k/v only).
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope: RopeConfig = field(default_factory=RopeConfig)
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_windows: tuple[int | None, ...] = ()
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    torch_dtype: str | None = None

    def __post_init__(self) -> None:
        require(
            self.architecture in SUPPORTED_ARCHITECTURES,
            f"unsupported architecture {self.architecture}",
        )
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            require(
                isinstance(value, int) and value > 0,
                f"model config {name} must be a positive int, got {value!r}",
            )
        require(
            self.num_heads % self.num_kv_heads == 0,
            f"num_attention_heads {self.num_heads} is not a multiple of "
            f"num_key_value_heads {self.num_kv_heads}",
        )
        require(
            self.head_dim % 2 == 0,
            f"head_dim must be even for rotary embeddings, got {self.head_dim}",
        )
        require(self.rms_norm_eps > 0, f"rms_norm_eps must be > 0, got {self.rms_norm_eps}")
        if not self.sliding_windows:
            object.__setattr__(self, "sliding_windows", (None,) * self.num_layers)
        require(
            len(self.sliding_windows) == self.num_layers,
            f"{len(self.sliding_windows)} sliding windows for {self.num_layers} layers",
        )
        for w in self.sliding_windows:
            require(
                w is None or (isinstance(w, int) and w > 0),
                f"sliding window must be a positive int, got {w!r}",
            )

    @property
    def model_type(self) -> str:
        return SUPPORTED_ARCHITECTURES[self.architecture]

    @property
    def num_query_groups(self) -> int:
        """Query heads per KV head (grouped-query attention)."""
        return self.num_heads // self.num_kv_heads

    def kv_bytes_per_token(self, element_size: int = 2) -> int:
        """KV cache bytes per token (K and V of every layer) at ``element_size`` bytes each."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * element_size

    def num_parameters(self) -> int:
        """Number of weights, counting tied embeddings once."""
        h, f, d = self.hidden_size, self.intermediate_size, self.head_dim
        attn = h * d * (self.num_heads * 2 + self.num_kv_heads * 2)
        attn += (self.num_heads + 2 * self.num_kv_heads) * d if self.qkv_bias else 0
        attn += h if self.o_bias else 0
        mlp = 3 * h * f + ((2 * f + h) if self.mlp_bias else 0)
        per_layer = attn + mlp + 2 * h
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + embed + h

    @classmethod
    def from_hf_dict(cls, raw: Mapping[str, Any]) -> ModelConfig:
        """Parse a Hugging Face ``config.json`` mapping; unsupported models raise DopdError."""
        archs = raw.get("architectures") or []
        require(isinstance(archs, list) and len(archs) > 0, "config.json names no architectures")
        arch = str(archs[0])
        require(arch in SUPPORTED_ARCHITECTURES, f"unsupported architecture {arch}")
        act = raw.get("hidden_act", "silu")
        require(act in ("silu", "swish"), f"unsupported hidden_act {act!r} (only silu)")
        try:
            hidden = int(raw["hidden_size"])
            heads = int(raw["num_attention_heads"])
            layers = int(raw["num_hidden_layers"])
            vocab = int(raw["vocab_size"])
            ffn = int(raw["intermediate_size"])
        except KeyError as exc:
            raise DopdError(f"config.json lacks {exc.args[0]}") from None
        require(
            (heads > 0 and hidden % heads == 0) or raw.get("head_dim") is not None,
            "config.json: hidden_size is not a multiple of num_attention_heads "
            "and head_dim is unset",
        )
        head_dim = int(raw.get("head_dim") or hidden // heads)
        kv_heads = int(raw.get("num_key_value_heads") or heads)
        max_pos = int(raw.get("max_position_embeddings", 2048))
        model_type = SUPPORTED_ARCHITECTURES[arch]
        rope = _parse_rope(raw, max_pos)
        eos = raw.get("eos_token_id")
        eos_ids = tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None)
        bias = bool(raw.get("attention_bias", False))
        return cls(
            architecture=arch,
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=ffn,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            max_position_embeddings=max_pos,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope=rope,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=True if model_type == "qwen2" else bias,
            o_bias=bias if model_type == "llama" else False,
            mlp_bias=bool(raw.get("mlp_bias", False)) if model_type == "llama" else False,
            sliding_windows=_parse_windows(raw, model_type, layers),
            bos_token_id=_opt_int(raw.get("bos_token_id")),
            eos_token_ids=eos_ids,
            pad_token_id=_opt_int(raw.get("pad_token_id")),
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """A ``config.json`` mapping that :meth:`from_hf_dict` and transformers both read back."""
        rope: dict[str, Any] = {"rope_type": self.rope.rope_type, "rope_theta": self.rope.theta}
        if self.rope.rope_type != "default":
            rope["factor"] = self.rope.factor
        if self.rope.rope_type == "llama3":
            rope.update(
                low_freq_factor=self.rope.low_freq_factor,
                high_freq_factor=self.rope.high_freq_factor,
            )
        if self.rope.rope_type in ("llama3", "yarn"):
            rope["original_max_position_embeddings"] = (
                self.rope.original_max_position_embeddings or self.max_position_embeddings
            )
        windows = {w for w in self.sliding_windows if w is not None}
        require(len(windows) <= 1, "cannot write a config with several different sliding windows")
        out: dict[str, Any] = {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope.theta,
            "rope_scaling": None if self.rope.rope_type == "default" else rope,
            "rope_parameters": rope,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids)
            if len(self.eos_token_ids) != 1
            else self.eos_token_ids[0],
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.torch_dtype or "float32",
        }
        if self.model_type == "llama":
            out.update(attention_bias=self.qkv_bias, mlp_bias=self.mlp_bias)
        elif self.model_type == "mistral":
            out["sliding_window"] = next(iter(windows), None)
        else:
            out["use_sliding_window"] = bool(windows)
            out["sliding_window"] = next(iter(windows), None)
            first = next(
                (i for i, w in enumerate(self.sliding_windows) if w is not None), self.num_layers
            )
            out["max_window_layers"] = first
        return out


def _opt_int(value: Any) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return None if value is None else int(value)


def _parse_rope(raw: Mapping[str, Any], max_pos: int) -> RopeConfig:
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    require(isinstance(params, Mapping), "config.json rope parameters must be a mapping")
    require(
        "full_attention" not in params and "sliding_attention" not in params,
        "per-layer-type rope parameters are not supported",
    )
    rope_type = str(params.get("rope_type", params.get("type", "default")))
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    require(
        float(params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0))) == 1.0,
        "partial rotary embeddings are not supported",
    )
    orig = params.get(
        "original_max_position_embeddings", raw.get("original_max_position_embeddings")
    )
    if rope_type in ("llama3", "yarn") and orig is None:
        orig = max_pos
    factor = params.get("factor")
    if factor is None and rope_type == "yarn" and orig:
        factor = max_pos / float(orig)
    return RopeConfig(
        theta=theta,
        rope_type=rope_type,
        factor=float(factor if factor is not None else 1.0),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=None if orig is None else int(orig),
        attention_factor=_opt_float(params.get("attention_factor")),
        beta_fast=float(params.get("beta_fast") or 32.0),
        beta_slow=float(params.get("beta_slow") or 1.0),
        mscale=_opt_float(params.get("mscale")),
        mscale_all_dim=_opt_float(params.get("mscale_all_dim")),
        truncate=bool(params.get("truncate", True)),
    )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _parse_windows(raw: Mapping[str, Any], model_type: str, layers: int) -> tuple[int | None, ...]:
    window = raw.get("sliding_window")
    if model_type == "llama" or window is None:
        return (None,) * layers
    window = int(window)
    if model_type == "mistral":
        return (window,) * layers
    types = raw.get("layer_types")
    if isinstance(types, list) and len(types) == layers:
        return tuple(window if t == "sliding_attention" else None for t in types)
    if not raw.get("use_sliding_window", False):
        return (None,) * layers
    first = int(raw.get("max_window_layers", layers))
    return tuple(window if i >= first else None for i in range(layers))
