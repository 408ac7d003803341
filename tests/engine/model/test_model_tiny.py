"""dopd-tiny: deterministic weights, the byte tokenizer, chat template, HF-format writing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dopd.engine.model import (
    TINY_CONFIG,
    Tokenizer,
    build_tiny,
    generate_greedy,
    tiny_tokenizer,
    write_random_checkpoint,
)
from dopd.engine.model.tiny import random_hf_state_dict
from dopd.errors import DopdError


def test_weights_are_seeded_and_pinned() -> None:
    a = random_hf_state_dict(TINY_CONFIG)
    b = random_hf_state_dict(TINY_CONFIG)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(
        random_hf_state_dict(TINY_CONFIG, seed=1)["lm_head.weight"], a["lm_head.weight"]
    )
    # golden values: the same dopd-tiny on every machine (changes only if torch's CPU RNG does)
    embed = a["model.embed_tokens.weight"]
    assert embed.shape == (262, 256) and embed.dtype == torch.float32
    assert embed[0, :4].tolist() == pytest.approx(
        [-0.004962189123034477, 0.00748133659362793, 0.0018541697645559907, -0.01631997339427471],
        abs=1e-9,
    )
    assert float(embed.double().sum()) == pytest.approx(0.49116178964568746, abs=1e-6)
    assert TINY_CONFIG.num_parameters() == sum(t.numel() for t in a.values())


def test_tiny_generation_is_deterministic() -> None:
    tiny = build_tiny()
    assert tiny.tokenizer is not None
    ids = tiny.tokenizer.encode("Hello, dopd!")
    assert ids == [256, *b"Hello, dopd!"]
    assert generate_greedy(tiny.model, ids, 12) == [
        44,
        83,
        43,
        211,
        127,
        248,
        43,
        211,
        248,
        43,
        176,
        248,
    ]


def test_byte_tokenizer_round_trip_and_specials() -> None:
    tok = tiny_tokenizer()
    text = "héllo wörld 日本 \n\t!"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.encode(text)[0] == tok.bos_id == 256
    assert tok.eos_id == 257 and tok.pad_id == 258 and tok.vocab_size == TINY_CONFIG.vocab_size
    assert tok.encode("a<|eos|>b", add_special_tokens=False) == [97, 257, 98]
    assert tok.decode([97, 257, 98]) == "ab"
    assert tok.decode([97, 257, 98], skip_special_tokens=False) == "a<|eos|>b"
    assert tok.decode([0xE6, 0x97]) == "\ufffd"


def test_chat_template() -> None:
    tok = tiny_tokenizer()
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    text = tok.apply_chat_template(messages)
    assert text == "<|bos|><|system|>be brief<|eos|><|user|>hi<|eos|><|assistant|>"
    assert tok.encode_chat(messages[1:]) == [256, 260, 104, 105, 257, 261]
    assert not tok.apply_chat_template(messages, add_generation_prompt=False).endswith(
        "<|assistant|>"
    )
    with pytest.raises(DopdError, match="unknown role tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])
    with pytest.raises(DopdError, match="no chat template"):
        Tokenizer(tok.backend).apply_chat_template(messages)


def test_written_folder_is_a_valid_hf_checkpoint(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    folder = write_random_checkpoint(tmp_path / "tiny")
    assert {p.name for p in folder.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    text = "Grüße, dopd"
    assert hf_tok(text)["input_ids"] == tiny_tokenizer().encode(text)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in hf.parameters()) == TINY_CONFIG.num_parameters()
