"""Sampler (greedy, temperature, top-k, top-p, per-request seeds) and stop conditions."""

from __future__ import annotations

import pytest
import torch

from dopd.engine.model import (
    FinishReason,
    Sampler,
    SamplingParams,
    check_stop,
    make_generator,
    tiny_tokenizer,
    truncate_at_stop,
)
from dopd.errors import DopdError

VOCAB = 50


def logits_batch(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 2


def draw(logits: torch.Tensor, params: SamplingParams, n: int, seed: int = 7) -> list[int]:
    """``n`` tokens of one request from one row, with its own generator."""
    gen = make_generator(seed)
    sampler = Sampler()
    return [sampler.sample(logits[None], [params], [gen])[0] for _ in range(n)]


def test_greedy_is_argmax_and_needs_no_generator() -> None:
    logits = logits_batch(6)
    params = [SamplingParams(temperature=0.0)] * 6
    assert Sampler().sample(logits, params, [None] * 6) == logits.argmax(-1).tolist()


def test_seeded_requests_reproduce_and_ignore_batch_composition() -> None:
    logits = logits_batch(5)
    params = SamplingParams(temperature=0.8, top_k=20, top_p=0.9)
    alone = draw(logits[2], params, 30, seed=11)
    assert alone == draw(logits[2], params, 30, seed=11)
    assert alone != draw(logits[2], params, 30, seed=12)
    # the same request inside a batch of others (greedy and sampled) draws the same tokens
    gens = [make_generator(s) for s in (1, 11, 3)]
    mixed_params = [SamplingParams(temperature=1.3), params, SamplingParams(temperature=0.0)]
    rows = logits[[0, 2, 4]]
    in_batch = [
        Sampler().sample(rows, mixed_params, [gens[0], gens[1], None])[1] for _ in range(30)
    ]
    assert in_batch == alone


def test_top_k_restricts_support() -> None:
    logits = logits_batch(1, seed=3)[0]
    top3 = set(logits.topk(3).indices.tolist())
    got = draw(logits, SamplingParams(temperature=5.0, top_k=3), 300)
    assert set(got) == top3
    assert set(draw(logits, SamplingParams(temperature=1.0, top_k=1), 20)) == {int(logits.argmax())}


def test_top_p_restricts_support_to_nucleus() -> None:
    logits = torch.tensor([3.0, 2.5, 2.0, -1.0, -2.0, -3.0])
    probs = logits.softmax(-1)
    # nucleus for p = 0.9: smallest prefix (by probability) whose mass reaches 0.8
    nucleus = {0, 1, 2}
    assert probs[:2].sum() < 0.9 <= probs[:3].sum()
    got = draw(logits, SamplingParams(temperature=1.0, top_p=0.9), 400)
    assert set(got) == nucleus


def test_temperature_sampling_follows_the_distribution() -> None:
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5])
    n = 4000
    counts = torch.bincount(
        torch.tensor(draw(logits, SamplingParams(temperature=1.0), n)), minlength=4
    )
    expected = logits.softmax(-1) * n
    # chi-square with 3 degrees of freedom; 16.3 is its 0.999 quantile
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.3
    hot = torch.bincount(
        torch.tensor(draw(logits, SamplingParams(temperature=0.25), n)), minlength=4
    )
    assert hot[0] > 0.85 * n


def test_bad_params_and_missing_generator() -> None:
    with pytest.raises(DopdError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(DopdError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(DopdError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(DopdError, match="stop strings"):
        SamplingParams(stop=("",))
    with pytest.raises(DopdError, match="no generator"):
        Sampler().sample(logits_batch(1), [SamplingParams()], [None])
    with pytest.raises(DopdError, match="2 logits rows"):
        Sampler().sample(logits_batch(2), [SamplingParams()], [None])


def test_stop_tokens_eos_and_length() -> None:
    params = SamplingParams(max_tokens=4, stop_token_ids=(9,))
    assert check_stop([5], params, eos_token_ids=(2,)) is None
    assert check_stop([5, 2], params, eos_token_ids=(2,)).reason is FinishReason.STOP
    assert check_stop([5, 9], params).token_id == 9
    ignore = SamplingParams(max_tokens=4, ignore_eos=True)
    assert check_stop([5, 2], ignore, eos_token_ids=(2,)) is None
    hit = check_stop([5, 2, 3, 4], ignore, eos_token_ids=(2,))
    assert hit is not None and hit.reason is FinishReason.LENGTH


def test_stop_strings_on_detokenised_tail() -> None:
    tok = tiny_tokenizer()
    params = SamplingParams(max_tokens=100, stop=("END", "ß!"))
    text_ids = list(b"some long preamble that is not a stop ")
    assert check_stop(text_ids, params, tokenizer=tok) is None
    hit = check_stop([*text_ids, *b"EN", *b"D"], params, tokenizer=tok)
    assert hit is not None and hit.stop_string == "END" and hit.reason is FinishReason.STOP
    # a multi-byte stop string completed by its last byte
    assert check_stop([*text_ids, *"xß!".encode()], params, tokenizer=tok).stop_string == "ß!"
    with pytest.raises(DopdError, match="need a tokenizer"):
        check_stop([1, 2], params)
    assert truncate_at_stop("answer: 42 END more ß!", params.stop) == "answer: 42 "
    assert truncate_at_stop("no stop here", params.stop) == "no stop here"
