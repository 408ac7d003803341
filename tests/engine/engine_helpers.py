"""Shared helpers of the real-engine tests: a small random HF Llama checkpoint and its references.

The checkpoint is built with transformers from a random config, its weights redrawn from a seeded
generator (so norms matter and greedy choices are far from ties), saved with ``save_pretrained``
together with dopd-tiny's byte tokenizer, and loaded back with dopd's loader. transformers is a
test-only dependency.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dopd.engine.model import LoadedModel, load_checkpoint, tiny_tokenizer

HF_CONFIG: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=300,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    bos_token_id=256,
    eos_token_id=257,
    rope_theta=10000.0,
)


def randomize_(model: Any, seed: int) -> None:
    """Redraw every parameter of a transformers model from a seeded generator (weights, norms
    and biases), so a mis-loaded norm or bias shows and greedy choices are far from ties."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.2 * noise)
            else:
                p.copy_(0.08 * noise)


@dataclass
class HFPair:
    """The same random weights as a transformers model and as a dopd checkpoint folder."""

    hf: Any
    path: Path

    def load(self) -> LoadedModel:
        """A fresh dopd model loaded from the folder (each engine gets its own)."""
        return load_checkpoint(self.path)

    def greedy(self, ids: list[int], max_new: int) -> list[int]:
        """transformers' greedy continuation of ``ids``: exactly ``max_new`` tokens."""
        with torch.no_grad():
            x = torch.tensor([ids])
            out = self.hf.generate(
                x,
                attention_mask=torch.ones_like(x),
                do_sample=False,
                max_new_tokens=max_new,
                min_new_tokens=max_new,
            )
        return out[0, len(ids) :].tolist()


def build_hf_pair(folder: Path, seed: int = 0) -> HFPair:
    """Write a random Llama checkpoint to ``folder`` with transformers' ``save_pretrained``."""
    import transformers

    torch.manual_seed(seed)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**HF_CONFIG)).eval()
    randomize_(hf, seed)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 258
    hf.save_pretrained(folder)
    tiny_tokenizer().save(folder)
    return HFPair(hf, folder)


def random_prompt(n: int, seed: int) -> list[int]:
    """``n`` random byte token ids (valid for the tiny tokenizer), seeded."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n,), generator=gen).tolist()


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
