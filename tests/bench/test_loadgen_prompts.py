"""Prompt synthesis for the load generator: exact token counts with the dopd-tiny tokenizer and
a trained BPE tokenizer, character-based estimates, spec errors, seeding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dopd.bench.loadgen_prompts import (
    ByteSynth,
    CharsSynth,
    TokenizerSynth,
    make_synth,
    synthesize_prompts,
)
from dopd.errors import DopdError
from dopd.workload import Workload


def test_byte_synth_matches_the_dopd_tiny_tokenizer_exactly() -> None:
    from dopd.engine.model.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    synth = make_synth("auto", "dopd-tiny")
    rng = np.random.default_rng(1)
    for n in (2, 17, 500, 2047):
        assert len(tok.encode(synth.make(n, rng))) == n
    assert len(synth.make(1, rng)) == 1  # at least one character of text, so BOS + 1
    assert make_synth("byte").make(9, rng).isascii() and len(make_synth("byte").make(9, rng)) == 9


def _trained_bpe(path: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from dopd.bench.loadgen_prompts import WORDS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    rng = np.random.default_rng(0)
    corpus = [" ".join(rng.choice(WORDS[:150], 40)) for _ in range(300)]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tok.save(str(path))
    return path


def test_tokenizer_synth_hits_exact_lengths_with_a_bpe_tokenizer(tmp_path: Path) -> None:
    path = _trained_bpe(tmp_path / "tokenizer.json")
    synth = make_synth(str(tmp_path))  # a folder holding tokenizer.json
    assert isinstance(synth, TokenizerSynth)
    rng = np.random.default_rng(3)
    for n in (2, 5, 64, 333, 1500):
        text = synth.make(n, rng)
        assert synth.count(text) == n, n
    assert synth.count("") == 1  # the BOS the post-processor adds counts
    assert synth.count(synth.make(1, rng)) == 2  # at least one token of text
    assert make_synth(str(path)).spec == str(path)


def test_chars_synth_and_spec_errors(tmp_path: Path) -> None:
    synth = make_synth("chars:3.5")
    assert isinstance(synth, CharsSynth)
    assert len(synth.make(100, np.random.default_rng(0))) == 350
    assert isinstance(make_synth("auto", "llama"), CharsSynth)
    assert make_synth("byte:special=2").make(10, np.random.default_rng(0)).__len__() == 8
    for bad, match in (("chars:x", "not a number"), ("chars:-1", "must be > 0"),
                       ("byte:special=1.5", "whole number"), ("nope", "not auto, dopd-tiny")):
        with pytest.raises(DopdError, match=match):
            make_synth(bad)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DopdError, match="cannot read tokenizer"):
        make_synth(str(tmp_path))


def test_prompts_are_seeded_distinct_and_independent_of_other_requests() -> None:
    wl = Workload("w", np.array([0.0, 0.1, 0.2, 0.3]), np.full(4, 200), np.ones(4, dtype=int))
    synth = ByteSynth()
    a = synthesize_prompts(synth, wl, seed=5)
    assert a == synthesize_prompts(ByteSynth(), wl, seed=5)
    assert a != synthesize_prompts(ByteSynth(), wl, seed=6)
    assert len({p[:32] for p in a}) == 4  # no shared prefixes between requests
    longer = Workload("w", wl.arrival_s, np.array([200, 50_000, 200, 200]), wl.output_tokens)
    b = synthesize_prompts(ByteSynth(), longer, seed=5)
    assert b[0] == a[0] and b[2:] == a[2:] and len(b[1]) == 50_000
