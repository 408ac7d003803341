"""The sampler over extreme but valid parameters and logits, batched with other requests.

Hypothesis draws batches mixing greedy rows, tiny temperatures (down to 1e-46, below float32's
range), tiny top-p (1e-46), any top-k, any seed, and logits with huge values, ties, NaN and
infinities in every dtype a worker uses; every row must get a token of the vocabulary that its
own filters allow, the same token as when it is sampled alone.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dopd.engine.model import Sampler, SamplingParams, make_generator

TINY_FLOATS = [1e-46, 1e-45, 5e-324, 1e-300, 1e-38, 1e-7]

temperatures = st.one_of(
    st.just(0.0),
    st.sampled_from(TINY_FLOATS),
    st.floats(min_value=0.0, max_value=2.0, allow_subnormal=True),
)
top_ps = st.one_of(
    st.just(1.0),
    st.sampled_from(TINY_FLOATS),
    st.floats(min_value=5e-324, max_value=1.0, allow_subnormal=True),
)
top_ks = st.one_of(st.sampled_from([-1, 0, 1, 2, 3]), st.integers(-(2**63), 2**64))
params_st = st.builds(
    SamplingParams,
    temperature=temperatures,
    top_p=top_ps,
    top_k=top_ks,
    seed=st.integers(-(2**63), 2**64 - 1),
)


@st.composite
def logits_st(draw: st.DrawFn, rows: int) -> torch.Tensor:
    vocab = draw(st.sampled_from([2, 5, 50]))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e4, 1e38]))
    seed = draw(st.integers(0, 2**31))
    x = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale
    for _ in range(draw(st.integers(0, 4))):
        r, c = draw(st.integers(0, rows - 1)), draw(st.integers(0, vocab - 1))
        x[r, c] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf"), 0.0]))
    if draw(st.booleans()):  # ties at the top of a row
        r = draw(st.integers(0, rows - 1))
        x[r, : max(2, vocab // 2)] = x[r].nan_to_num(nan=0.0).max()
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    return x.to(dtype)


def _allowed(row: torch.Tensor, p: SamplingParams) -> set[int]:
    """Tokens that ``p``'s top-k can ever pick from ``row`` (ties at the k-th value included)."""
    vocab = row.shape[0]
    big = torch.finfo(torch.float32).max
    finite = row.float().nan_to_num(nan=-big, posinf=big, neginf=-big)
    k = p.top_k if 0 < p.top_k < vocab else vocab
    kth = finite.sort(descending=True).values[k - 1]
    return {i for i in range(vocab) if finite[i] >= kth}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), params=st.lists(params_st, min_size=1, max_size=6))
def test_any_valid_batch_samples_allowed_tokens_independently(
    data: st.DataObject, params: list[SamplingParams]
) -> None:
    logits = data.draw(logits_st(len(params)))
    vocab = logits.shape[1]
    gens = [None if p.greedy else make_generator(p.seed or 0) for p in params]
    tokens = Sampler().sample(logits, params, gens)
    assert len(tokens) == len(params)
    for i, (tok, p) in enumerate(zip(tokens, params, strict=True)):
        assert 0 <= tok < vocab
        if p.greedy:
            assert tok == int(logits[i].argmax())
            continue
        assert tok in _allowed(logits[i], p)
        alone = Sampler().sample(logits[i : i + 1], [p], [make_generator(p.seed or 0)])[0]
        assert tok == alone, f"row {i} draws {tok} in the batch but {alone} alone"


@settings(max_examples=100, deadline=None)
@given(temperature=st.sampled_from([1e-46, 1e-45, 1e-300, 5e-324]),
       top_p=st.sampled_from([1.0, 0.5, 1e-46]), seed=st.integers(0, 2**64 - 1))
def test_vanishing_temperature_or_top_p_is_argmax(temperature: float, top_p: float,
                                                  seed: int) -> None:
    logits = torch.tensor([[0.5, 3.0, -1.0, 2.0, 2.5]])
    for p in (SamplingParams(temperature=temperature, top_p=top_p),
              SamplingParams(temperature=1.0, top_p=1e-46),
              SamplingParams(temperature=2.0, top_k=1)):
        assert Sampler().sample(logits, [p], [make_generator(seed)]) == [1]
