"""TorchRunner on hand-built step plans: segments, sampled rows, stops and plan checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dopd.engine.model import (
    TINY_CONFIG,
    LlamaModel,
    SamplingParams,
    Segment,
    build_tiny,
    generate_greedy,
    make_generator,
)
from dopd.engine.model.tiny import random_hf_state_dict
from dopd.engine.plan import FinishReason, PrefillChunk, StepPlan
from dopd.engine.request_state import RequestRecord
from dopd.engine.torch_runner import TorchRunner
from dopd.errors import DopdError

BLOCK = 4


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> LlamaModel:
    return build_tiny().model


def record(rid: int, prompt: list[int], params: SamplingParams | None = None) -> RequestRecord:
    params = params or SamplingParams(max_tokens=50, temperature=0.0)
    gen = None if params.greedy else make_generator(params.seed or 0)
    return RequestRecord(rid, list(prompt), params, params.max_tokens, params.seed or 0, gen, None)


def plan(step: int, chunks=(), decodes=()) -> StepPlan:
    """``chunks``: (rid, new, cached, completes, table); ``decodes``: (rid, ctx, table)."""
    pcs = tuple(PrefillChunk(r, n, c, done, tuple(t)) for r, n, c, done, t in chunks)
    ids = tuple(d[0] for d in decodes)
    return StepPlan(
        step_id=step,
        prefill=pcs,
        decode_ids=ids,
        decode_context=tuple(d[1] for d in decodes),
        decode_block_tables=tuple(tuple(d[2]) for d in decodes),
        prefill_new_tokens=sum(c.new_tokens for c in pcs),
        prefill_attn_sum=sum(c.new_tokens * (c.cached_tokens + c.new_tokens) for c in pcs),
        decode_ctx_sum=sum(d[1] for d in decodes),
        sampling_ids=ids + tuple(c.request_id for c in pcs if c.completes_prompt),
    )


def test_mixed_plan_samples_the_right_rows(model: LlamaModel) -> None:
    a, b = [256, *range(40, 50)], [256, *range(60, 77)]  # 11 and 18 tokens
    ref_a = generate_greedy(model, a, 3, block_size=BLOCK)
    ref_b = generate_greedy(model, b, 2, block_size=BLOCK)
    records = {1: record(1, a), 2: record(2, b)}
    runner = TorchRunner(model, model.make_cache(16, BLOCK), records)
    ta, tb = [0, 1, 2, 3], [8, 9, 10, 11, 12]
    res = runner.execute(plan(1, chunks=[(1, 11, 0, True, ta), (2, 10, 0, False, tb)]))
    assert res.tokens == (ref_a[0],) and records[1].output_ids == ref_a[:1]
    assert records[2].output_ids == [] and res.duration_s > 0
    # a decode of request 1 and the last chunk of request 2 share the step
    res = runner.execute(plan(2, chunks=[(2, 8, 10, True, tb)], decodes=[(1, 11, ta)]))
    assert res.tokens == (ref_a[1], ref_b[0]) and res.finished == ()
    res = runner.execute(plan(3, decodes=[(2, 18, tb), (1, 12, ta)]))
    assert res.tokens == (ref_b[1], ref_a[2])
    assert records[1].output_ids == ref_a and records[2].output_ids == ref_b


def test_recompute_prefill_covers_prompt_and_output_tokens(model: LlamaModel) -> None:
    prompt = [256, 1, 2, 3, 4, 5]
    ref = generate_greedy(model, prompt, 4, block_size=BLOCK)
    rec = record(1, prompt)
    rec.output_ids = ref[:2]  # preempted after two tokens: re-prefill 8 tokens in two chunks
    runner = TorchRunner(model, model.make_cache(8, BLOCK), {1: rec})
    table = [5, 3, 7]
    runner.execute(plan(1, chunks=[(1, 7, 0, False, table)]))
    res = runner.execute(plan(2, chunks=[(1, 1, 7, True, table)]))
    assert res.tokens == (ref[2],)


def test_stop_tokens_strings_and_eos(model: LlamaModel) -> None:
    prompt = [256, 10, 20, 30]
    ref = generate_greedy(model, prompt, 2, block_size=BLOCK)
    tok = build_tiny().tokenizer
    cases = [
        (SamplingParams(temperature=0.0, stop_token_ids=(ref[0],)), (), True),
        (SamplingParams(temperature=0.0), (ref[0],), True),
        (SamplingParams(temperature=0.0, ignore_eos=True), (ref[0],), False),
        (SamplingParams(temperature=0.0, stop=(tok.decode([ref[0]]) or "x",)), (), True),
        (SamplingParams(temperature=0.0, max_tokens=1), (), False),  # length: the scheduler's
    ]
    for params, eos, stops in cases:
        rec = record(1, prompt, params)
        runner = TorchRunner(model, model.make_cache(4, BLOCK), {1: rec}, eos_token_ids=eos,
                             tokenizer=tok)
        res = runner.execute(plan(1, chunks=[(1, 4, 0, True, [0])]))
        assert res.finished == (((1, FinishReason.STOP),) if stops else ()), params


def test_seeded_sampling_does_not_depend_on_batch_companions(model: LlamaModel) -> None:
    params = SamplingParams(max_tokens=8, temperature=1.0, top_k=20, seed=5)

    def first_token(with_other: bool) -> int:
        records = {1: record(1, [256, 7, 8, 9], params)}
        chunks = [(1, 4, 0, True, [0])]
        if with_other:
            records[2] = record(2, [256, 1], SamplingParams(temperature=1.5, seed=9))
            chunks.insert(0, (2, 2, 0, True, [1]))
        runner = TorchRunner(model, model.make_cache(4, BLOCK), records)
        runner.execute(plan(1, chunks=chunks))
        return records[1].output_ids[0]

    assert first_token(False) == first_token(True)


def test_plan_disagreeing_with_the_records_raises(model: LlamaModel) -> None:
    rec = record(1, [256, 1, 2])
    runner = TorchRunner(model, model.make_cache(4, BLOCK), {1: rec})
    with pytest.raises(DopdError, match="decode over 5 cached tokens"):
        runner.execute(plan(1, decodes=[(1, 5, [0, 1])]))
    with pytest.raises(DopdError, match="prefill to 2 of 3 tokens"):
        runner.execute(plan(1, chunks=[(1, 2, 0, True, [0])]))
    with pytest.raises(DopdError, match="cannot hold"):
        runner.execute(plan(1, chunks=[(1, 3, 0, True, [])]))
    one_layer = dataclasses.replace(TINY_CONFIG, num_layers=1, sliding_windows=(None,))
    other = LlamaModel.from_hf_state_dict(one_layer, random_hf_state_dict(one_layer))
    with pytest.raises(DopdError, match="layers"):
        TorchRunner(other, model.make_cache(4, BLOCK), {})


def test_only_last_position_logits_are_computed(model: LlamaModel) -> None:
    cache = model.make_cache(8, BLOCK)
    logits = model.forward([Segment([0, 1, 2], 0, list(range(1, 10)))], cache)
    assert logits.shape == (1, model.config.vocab_size)
