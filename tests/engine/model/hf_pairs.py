"""Small random Hugging Face checkpoints of each architecture, as (transformers, dopd) pairs.

Each checkpoint is built with transformers from a random config, its weights redrawn from a seeded
generator (norm weights and biases included, so a mis-loaded bias or norm shows), saved with
``save_pretrained`` together with dopd-tiny's byte tokenizer, and loaded back with dopd's loader.
transformers is a test-only dependency: it is imported here and nowhere in ``src``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_helpers import HF_CONFIG, randomize_

from dopd.engine.model import LlamaModel, load_checkpoint, tiny_tokenizer

COMMON = HF_CONFIG  # every variant starts from the engine tests' checkpoint config

# name -> (config class, model class, extra config)
VARIANTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama3-rope": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
            rope_theta=500000.0,
        ),
    ),
    "llama-linear-bias": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            rope_scaling={"rope_type": "linear", "factor": 2.0},
            attention_bias=True,
            mlp_bias=True,
            num_key_value_heads=4,
        ),
    ),
    "qwen2-tied-window": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(
            tie_word_embeddings=True,
            num_hidden_layers=3,
            use_sliding_window=True,
            sliding_window=7,
            max_window_layers=1,
            rope_theta=1000000.0,
        ),
    ),
    "mistral-window": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=6, head_dim=24)),
    "llama-dynamic": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=24),
    ),
    "llama-yarn": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            rope_scaling={
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 32,
            }
        ),
    ),
}


@dataclass
class Pair:
    """The same weights as a transformers model and as a dopd model."""

    name: str
    hf: Any
    ours: LlamaModel
    path: Path

    def hf_last_logits(self, ids: list[int]) -> torch.Tensor:
        """transformers' logits after the last token of ``ids`` (no cache)."""
        with torch.no_grad():
            return self.hf(torch.tensor([ids])).logits[0, -1].float()


def build_pair(name: str, folder: Path, seed: int = 0, **load_kwargs: Any) -> Pair:
    transformers = pytest.importorskip("transformers")
    cfg_cls, model_cls, extra = VARIANTS[name]
    config = getattr(transformers, cfg_cls)(**{**COMMON, **extra})
    torch.manual_seed(seed)
    hf = getattr(transformers, model_cls)(config).eval()
    randomize_(hf, seed)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 258
    hf.save_pretrained(folder)
    tiny_tokenizer().save(folder)
    loaded = load_checkpoint(folder, **load_kwargs)
    return Pair(name, hf, loaded.model, folder)
