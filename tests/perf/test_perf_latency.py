"""The roofline latency model: monotonicity, TP, breakdowns, closed-form decode runs."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dopd.errors import DopdError
from dopd.perf import (
    BatchShape,
    LatencyModel,
    RooflineLatencyModel,
    build_latency_model,
    get_model,
    get_preset,
)

CONFIGS = [
    ("llama-3-8b", "a100-80gb", 1, "modern"),
    ("llama-3-70b", "h100", 4, "modern"),
    ("qwen2.5-7b", "l40s", 2, "legacy2023"),
    ("opt-66b", "a100-80gb", 8, "legacy2023"),
    ("llama-2-13b", "h200", 1, "legacy2023"),
]
MODELS = [RooflineLatencyModel(m, g, tp, p, check_capacity=False) for m, g, tp, p in CONFIGS]


def sums(batch: BatchShape) -> tuple[int, int, int, int, int]:
    return (batch.prefill_new_tokens, batch.prefill_attn_sum, batch.prefill_count,
            batch.decode_count, batch.decode_ctx_sum)


chunks = st.lists(st.tuples(st.integers(1, 4096), st.integers(0, 32768)), max_size=6)
contexts = st.lists(st.integers(0, 32768), max_size=40)


@settings(max_examples=150, deadline=None)
@given(prefill=chunks, decode=contexts, op=st.integers(0, 4), index=st.integers(0, 1000),
       amount=st.integers(1, 3000), which=st.integers(0, len(MODELS) - 1))
def test_more_work_is_never_faster(prefill: list[tuple[int, int]], decode: list[int], op: int,
                                   index: int, amount: int, which: int) -> None:
    before = BatchShape(tuple(prefill), tuple(decode))
    pre, dec = list(prefill), list(decode)
    if op == 0 or (op in (1, 2) and not pre):
        pre.append((amount, index))
    elif op == 1:
        n, c = pre[index % len(pre)]
        pre[index % len(pre)] = (n + amount, c)
    elif op == 2:
        n, c = pre[index % len(pre)]
        pre[index % len(pre)] = (n, c + amount)
    elif op == 3 or not dec:
        dec.append(index)
    else:
        dec[index % len(dec)] += amount
    after = BatchShape(tuple(pre), tuple(dec))
    model = MODELS[which]
    assert model.step_time(*sums(after)) >= model.step_time(*sums(before))


def test_empty_batch_takes_no_time() -> None:
    for model in MODELS:
        assert model.step_time(0, 0, 0, 0, 0) == 0.0
        assert model.breakdown(BatchShape()).bound == "idle"


def test_decode_step_is_affine_in_context_sum() -> None:
    for model in MODELS:
        for b in (1, 7, 64, 300):
            alpha, slope = model.decode_coefficients(b)
            for ctx_sum in (0, 1000, b * 4096, 10**7):
                t = model.step_time(0, 0, 0, b, ctx_sum)
                assert t == pytest.approx(alpha + slope * ctx_sum, rel=1e-12)


def test_breakdown_is_consistent_with_step_time() -> None:
    rng = random.Random(7)
    for model in MODELS:
        for _ in range(20):
            batch = BatchShape(
                tuple((rng.randint(1, 2048), rng.choice((0, rng.randint(1, 8192))))
                      for _ in range(rng.randint(0, 4))),
                tuple(rng.randint(0, 8192) for _ in range(rng.randint(0, 64))))
            if batch.is_empty:
                continue
            b = model.breakdown(batch)
            assert b.step_ms == pytest.approx(model.step_time_for(batch) * 1e3, rel=1e-12)
            parts = b.gemm_ms + b.attention_ms + b.allreduce_ms + b.overhead_ms
            assert parts == pytest.approx(b.step_ms, rel=1e-12)
            assert b.attention_ms == pytest.approx(b.prefill_attention_ms + b.decode_attention_ms)
            assert b.gemm_ms >= max(b.gemm_compute_ms, b.weights_ms)


def test_bounds_small_decode_is_memory_bound_long_prefill_compute_bound() -> None:
    model = build_latency_model("llama-3-8b", "h100", 1, "modern")
    assert model.breakdown(BatchShape(decode=(1024,))).bound == "memory"
    assert model.breakdown(BatchShape(prefill=((8192, 0),))).bound == "compute"
    # batch-1 decode is close to streaming the weights once
    b = model.breakdown(BatchShape(decode=(1024,)))
    weights_at_peak_ms = get_model("llama-3-8b").streamed_weight_bytes / 3350e9 * 1e3
    assert weights_at_peak_ms < b.step_ms < 1.5 * weights_at_peak_ms


def test_tensor_parallelism_speeds_up_but_sublinearly_and_adds_allreduce() -> None:
    prefill = BatchShape(prefill=((4096, 0),))
    decode = BatchShape(decode=(2048,) * 32)
    times = {}
    for tp in (1, 2, 4, 8):
        model = RooflineLatencyModel("llama-3-70b", "h100", tp, "modern", check_capacity=False)
        times[tp] = (model.step_time_for(prefill), model.step_time_for(decode))
        allreduce = model.breakdown(prefill).allreduce_ms
        assert (allreduce > 0) == (tp > 1)
    for kind in (0, 1):
        assert times[1][kind] > times[2][kind] > times[4][kind] > times[8][kind]
        assert times[1][kind] / times[8][kind] < 8


def test_causal_attention_counts_half_the_pairs_and_is_exact_for_equal_chunks() -> None:
    modern = get_preset("modern")
    causal = RooflineLatencyModel("llama-3-8b", "a100-80gb", 1, modern)
    full = RooflineLatencyModel("llama-3-8b", "a100-80gb", 1,
                                dataclasses.replace(modern, causal_skip=False))

    def attn(model: LatencyModel, batch: BatchShape) -> float:
        return model.breakdown(batch).prefill_attention_ms

    single = BatchShape(prefill=((4096, 0),))
    ratio = attn(causal, single) / attn(full, single)
    assert ratio == pytest.approx((4096 * 4097 / 2) / 4096**2)

    def true_pairs(batch: BatchShape) -> float:
        return sum(n * c + n * (n + 1) / 2 for n, c in batch.prefill)

    equal = BatchShape(prefill=((1000, 3000),) * 3)
    for other in (BatchShape(prefill=((500, 0),) * 4), BatchShape(prefill=((7, 9000),))):
        got = attn(causal, equal) / attn(causal, other)
        assert got == pytest.approx(true_pairs(equal) / true_pairs(other))
    # unequal chunks: never below the true causal count, never above the full count
    mixed = BatchShape(prefill=((2000, 0), (100, 0), (100, 500)))
    est = attn(causal, mixed)
    per_pair = attn(causal, equal) / true_pairs(equal)
    assert true_pairs(mixed) * per_pair <= est * (1 + 1e-12)
    assert est <= mixed.prefill_attn_sum * per_pair


def test_modern_engine_decodes_faster_than_legacy() -> None:
    # CUDA graphs and fused kernels cut the per-step, per-layer and per-sequence overheads that
    # dominate decode. Prefill is not compared: the two presets are fitted to different references
    # (DistServe's OPT fits imply ~87 % GEMM efficiency, Vidur's Llama-3-8B profiles ~67 %).
    batch = BatchShape(decode=(512,) * 16)
    legacy = build_latency_model("opt-13b", "a100-80gb", 1, "legacy2023").step_time_for(batch)
    modern = build_latency_model("opt-13b", "a100-80gb", 1, "modern").step_time_for(batch)
    assert modern < legacy


def test_capacity_is_checked_outside_the_hot_path() -> None:
    model = build_latency_model("opt-13b", "a100-80gb", 1)
    cap = model.kv_capacity_tokens
    assert cap is not None
    fits = BatchShape(decode=(cap // 4 - 1,) * 4)
    too_big = BatchShape(decode=(cap // 4,) * 4 + (10,))
    model.breakdown(fits)
    with pytest.raises(DopdError, match=f"batch needs KV for {too_big.kv_tokens} tokens"):
        model.breakdown(too_big)
    with pytest.raises(DopdError, match="holds"):
        model.step_time_for(too_big)
    assert model.step_time(*sums(too_big)) > 0  # the hot path does not check


def test_batch_shape_validation() -> None:
    with pytest.raises(DopdError, match="new token"):
        BatchShape(prefill=((0, 5),))
    with pytest.raises(DopdError, match="cached"):
        BatchShape(prefill=((5, -1),))
    with pytest.raises(DopdError, match="context"):
        BatchShape(decode=(-3,))
    batch = BatchShape(prefill=((10, 5), (4, 0)), decode=(100, 200))
    assert (batch.prefill_new_tokens, batch.prefill_attn_sum, batch.kv_tokens) == (
        14, 10 * 15 + 16, 15 + 4 + 101 + 201)


def _loop_run(model: LatencyModel, b: int, ctx: int, steps: int) -> float:
    return math.fsum(model.step_time(0, 0, 0, b, ctx + i * b) for i in range(steps))


def _fitted() -> LatencyModel:
    return build_latency_model("opt-13b", "a100-80gb", 1, calibration="distserve:opt-13b:tp1")


def test_decode_run_time_equals_summed_steps() -> None:
    for model in [*MODELS, _fitted()]:
        for b, ctx, steps in ((1, 0, 1), (1, 100, 500), (37, 37 * 800, 250), (256, 10**5, 64)):
            assert model.decode_run_time(b, ctx, steps) == pytest.approx(
                _loop_run(model, b, ctx, steps), rel=1e-9)
        assert model.decode_run_time(8, 100, 0) == 0.0
    with pytest.raises(DopdError):
        MODELS[0].decode_run_time(8, 100, -1)


def test_decode_steps_within_matches_a_loop() -> None:
    rng = random.Random(3)
    for model in [*MODELS, _fitted()]:
        for _ in range(40):
            b = rng.randint(1, 300)
            ctx = b * rng.randint(0, 4000)
            budget = rng.uniform(0.0, 3.0)
            k, total = 0, 0.0
            while total + model.step_time(0, 0, 0, b, ctx + k * b) <= budget:
                total += model.step_time(0, 0, 0, b, ctx + k * b)
                k += 1
            got = model.decode_steps_within(b, ctx, budget)
            assert got == k
            assert model.decode_run_time(b, ctx, got) <= budget < model.decode_run_time(
                b, ctx, got + 1)
    assert MODELS[0].decode_steps_within(4, 400, -1.0) == 0
    with pytest.raises(DopdError):
        MODELS[0].decode_steps_within(0, 0, 1.0)
    with pytest.raises(DopdError):
        MODELS[0].decode_steps_within(4, 0, math.inf)
