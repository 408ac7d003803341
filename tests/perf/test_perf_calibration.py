"""Calibration: fitting DistServe-form coefficients, loading/saving them, the fitted model."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest

from dopd.errors import DopdError
from dopd.perf import (
    BatchShape,
    DistServeCoefficients,
    FittedLatencyModel,
    StepSample,
    build_latency_model,
    builtin_calibration_names,
    fit_calibration,
    get_anchor_fit,
    load_calibration,
    read_samples,
    save_calibration,
)
from dopd.perf.calibration import CSV_COLUMNS

TRUE = DistServeCoefficients((20.0, 0.1, 7e-6), (19.9, 6e-4, 0.04), (7.0, 5.8e-4, 0.16), 95)


def grid_samples(coeffs: DistServeCoefficients, noise: float, seed: int) -> list[StepSample]:
    """Steps over DistServe's profiling grid, timed by ``coeffs`` with multiplicative noise."""
    rng = np.random.default_rng(seed)
    model = FittedLatencyModel(coeffs)
    out = []
    for n in (128, 256, 512, 1024, 2048):
        for b in (1, 2, 4, 8):
            ms = model.step_time(n * b, n * n * b, b, 0, 0) * 1e3
            out.append(StepSample("prefill", b, n * b, n * n * b, 0,
                                  ms * (1 + noise * rng.standard_normal())))
    for b in (1, 2, 4, 8, 16, 32, 64, 128, 192, 256):
        for ctx in (256, 512, 1024):
            ms = model.step_time(0, 0, 0, b, b * ctx) * 1e3
            out.append(StepSample("decode", b, 0, 0, b * ctx,
                                  ms * (1 + noise * rng.standard_normal())))
    return out


def test_fit_recovers_known_coefficients_from_noisy_samples() -> None:
    # four noisy repetitions of the grid, 2 % multiplicative noise
    samples = [s for rep in range(4) for s in grid_samples(TRUE, noise=0.02, seed=10 + rep)]
    fit = fit_calibration(samples)
    got = fit.coefficients
    assert got.decode_large_b is not None and got.decode_split_batch == 95
    assert TRUE.decode_large_b is not None
    # the terms that carry most of the step time are pinned down tightly ...
    strong = [(got.prefill[0], TRUE.prefill[0]), (got.prefill[1], TRUE.prefill[1]),
              (got.decode_small_b[0], TRUE.decode_small_b[0]),
              (got.decode_small_b[1], TRUE.decode_small_b[1]),
              (got.decode_large_b[1], TRUE.decode_large_b[1]),
              (got.decode_large_b[2], TRUE.decode_large_b[2])]
    for value, true in strong:
        assert value == pytest.approx(true, rel=0.05)
    # ... the others contribute < 10 % of any step on the grid, so the noise moves them more
    weak = [(got.prefill[2], TRUE.prefill[2]), (got.decode_small_b[2], TRUE.decode_small_b[2]),
            (got.decode_large_b[0], TRUE.decode_large_b[0])]
    for value, true in weak:
        assert value == pytest.approx(true, rel=0.4)
    # predictions are what matters: within a few percent of the truth everywhere on the grid
    truth, fitted = FittedLatencyModel(TRUE), FittedLatencyModel(got)
    for sample in grid_samples(TRUE, noise=0.0, seed=0):
        args = ((sample.sum_tokens, sample.sum_sq_tokens, sample.batch_size, 0, 0)
                if sample.kind == "prefill" else (0, 0, 0, sample.batch_size, sample.sum_ctx))
        assert fitted.step_time(*args) == pytest.approx(truth.step_time(*args), rel=0.02)
    assert 0.01 < fit.prefill_rms_rel_error < 0.03 and 0.01 < fit.decode_rms_rel_error < 0.03
    assert fit.prefill_samples == 80 and fit.decode_samples == 120


@pytest.mark.parametrize("name", ["distserve:opt-13b:tp1", "distserve:opt-66b:tp4",
                                  "vllm:opt-13b:tp1"])
def test_fit_reproduces_a_published_fit_from_its_points(name: str) -> None:
    anchor = load_calibration(name)
    fit = fit_calibration(grid_samples(anchor, noise=0.0, seed=0))
    got = fit.coefficients
    assert np.allclose(got.prefill, anchor.prefill, rtol=1e-6)
    assert np.allclose(got.decode_small_b, anchor.decode_small_b, rtol=1e-6)
    assert got.decode_large_b is not None and anchor.decode_large_b is not None
    assert np.allclose(got.decode_large_b, anchor.decode_large_b, rtol=1e-6)
    assert fit.prefill_max_rel_error < 1e-9 and fit.decode_max_rel_error < 1e-9


def test_single_decode_set_without_split_or_large_batches() -> None:
    samples = grid_samples(TRUE, noise=0.0, seed=0)
    assert fit_calibration(samples, split_batch=None).coefficients.decode_large_b is None
    small_only = [s for s in samples if s.kind == "prefill" or s.batch_size < 95]
    fit = fit_calibration(small_only)
    assert fit.coefficients.decode_large_b is None
    assert np.allclose(fit.coefficients.decode_small_b, TRUE.decode_small_b, rtol=1e-6)


def test_fitted_coefficients_are_never_negative() -> None:
    flat = DistServeCoefficients((30.0, 0.2, 0.0), (25.0, 5e-4, 0.0))
    samples = grid_samples(flat, noise=0.03, seed=5)
    got = fit_calibration(samples, split_batch=None).coefficients
    assert min(got.prefill) >= 0 and min(got.decode_small_b) >= 0


def test_degenerate_or_scarce_samples_raise() -> None:
    samples = grid_samples(TRUE, noise=0.0, seed=0)
    with pytest.raises(DopdError, match="prefill: need >= 3 samples"):
        fit_calibration([s for s in samples if s.kind == "decode"])
    same_shape = [StepSample("prefill", 1, 512, 512 * 512, 0, 70.0)] * 5 + samples[20:]
    with pytest.raises(DopdError, match="do not determine the fit"):
        fit_calibration(same_shape)
    with pytest.raises(DopdError, match="kind"):
        StepSample("train", 1, 1, 1, 0, 1.0)
    with pytest.raises(DopdError, match="step_ms"):
        StepSample("decode", 1, 0, 0, 10, 0.0)


def write_csv(path: Path, samples: list[StepSample]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for s in samples:
            if s.kind == "prefill":
                row = [s.kind, s.batch_size, s.sum_tokens, s.sum_sq_tokens, "", s.step_ms]
            else:
                row = [s.kind, s.batch_size, "", "", s.sum_ctx, s.step_ms]
            writer.writerow(row)


def test_csv_fit_and_json_round_trip(tmp_path: Path) -> None:
    samples = grid_samples(TRUE, noise=0.01, seed=2)
    path = tmp_path / "steps.csv"
    write_csv(path, samples)
    assert read_samples(path) == samples
    from_csv = load_calibration(path)
    assert from_csv == fit_calibration(samples).coefficients
    saved = tmp_path / "coeffs.json"
    save_calibration(from_csv, saved)
    assert load_calibration(str(saved)) == from_csv
    single = tmp_path / "single.json"
    single.write_text(json.dumps({"prefill": [1, 0.1, 0], "decode": [10, 1e-3, 0.05]}))
    assert load_calibration(single) == DistServeCoefficients((1, 0.1, 0), (10, 1e-3, 0.05))
    model = build_latency_model("opt-13b", "a100-80gb", 1, calibration=saved)
    assert isinstance(model, FittedLatencyModel) and model.coefficients == from_csv
    assert model.kv_capacity_tokens is not None


def test_bad_calibration_files_raise(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("kind,batch_size,step_ms\nprefill,1,3\n")
    with pytest.raises(DopdError, match="missing CSV columns sum_tokens"):
        read_samples(bad)
    bad.write_text(",".join(CSV_COLUMNS) + "\nprefill,1,abc,4,0,3\n")
    with pytest.raises(DopdError, match=r"bad\.csv line 2"):
        read_samples(bad)
    with pytest.raises(DopdError, match="not found"):
        load_calibration(tmp_path / "missing.csv")
    js = tmp_path / "bad.json"
    js.write_text('{"prefill": [1, 2], "decode": [1, 2, 3]}')
    with pytest.raises(DopdError, match="'prefill' must be a list of 3 numbers"):
        load_calibration(js)
    js.write_text("{not json")
    with pytest.raises(DopdError, match="invalid JSON"):
        load_calibration(js)
    js.write_text('{"prefill": [1, 0.1, 0], "decode": [-1, 0.1, 0]}')
    with pytest.raises(DopdError, match="must be finite and >= 0"):
        load_calibration(js)
    with pytest.raises(DopdError, match=r"neither a \.csv/\.json file nor a built-in name"):
        load_calibration("distserve:opt-13b:tp9")


def test_builtin_calibrations_match_the_anchor_formulas() -> None:
    assert "distserve:opt-13b:tp1" in builtin_calibration_names()
    for name in builtin_calibration_names():
        anchor = get_anchor_fit(name)
        model = build_latency_model(anchor.model, "a100-80gb", anchor.tp, calibration=name)
        for n, b in ((128, 1), (2048, 8)):
            assert model.step_time(n * b, n * n * b, b, 0, 0) * 1e3 == pytest.approx(
                anchor.prefill_ms((n,) * b))
        for b, ctx in ((1, 256), (94, 512), (95, 512), (256, 1024)):
            assert model.step_time(0, 0, 0, b, b * ctx) * 1e3 == pytest.approx(
                anchor.decode_ms(b, ctx))


def test_builtin_calibration_must_match_model_gpu_and_tp() -> None:
    with pytest.raises(DopdError, match="measured for opt-13b at tp=1 on a100-80gb"):
        build_latency_model("llama-3-8b", "a100-80gb", 1, calibration="distserve:opt-13b:tp1")
    with pytest.raises(DopdError, match="not opt-13b at tp=2"):
        build_latency_model("opt-13b", "a100-80gb", 2, calibration="distserve:opt-13b:tp1")
    with pytest.raises(DopdError, match="on h100-sxm"):
        build_latency_model("opt-13b", "h100", 1, calibration="DISTSERVE:OPT-13B:TP1")


def test_fitted_mixed_steps_cost_at_least_each_phase_and_grow_with_work() -> None:
    model = FittedLatencyModel(load_calibration("distserve:opt-13b:tp1"))
    rng = random.Random(11)
    for _ in range(300):
        pre = tuple((rng.randint(1, 2048), rng.choice((0, rng.randint(0, 4096))))
                    for _ in range(rng.randint(1, 4)))
        dec = tuple(rng.randint(0, 2048) for _ in range(rng.randint(1, 300)))
        mixed = BatchShape(pre, dec)
        t = model.step_time(
            mixed.prefill_new_tokens, mixed.prefill_attn_sum, mixed.prefill_count,
            mixed.decode_count, mixed.decode_ctx_sum)
        prefill_only = model.step_time(mixed.prefill_new_tokens, mixed.prefill_attn_sum,
                                       mixed.prefill_count, 0, 0)
        decode_only = model.step_time(0, 0, 0, mixed.decode_count, mixed.decode_ctx_sum)
        assert t >= max(prefill_only, decode_only)
        more_tokens = model.step_time(mixed.prefill_new_tokens + 10, mixed.prefill_attn_sum + 500,
                                      mixed.prefill_count, mixed.decode_count,
                                      mixed.decode_ctx_sum)
        more_ctx = model.step_time(mixed.prefill_new_tokens, mixed.prefill_attn_sum,
                                   mixed.prefill_count, mixed.decode_count,
                                   mixed.decode_ctx_sum + 100)
        assert more_tokens >= t and more_ctx >= t
        b = model.breakdown(mixed)
        assert b.step_ms == pytest.approx(t * 1e3)
        assert b.gemm_ms + b.attention_ms + b.overhead_ms == pytest.approx(b.step_ms)
        assert b.bound == "fitted"


def test_fitted_model_checks_capacity() -> None:
    model = FittedLatencyModel(load_calibration("distserve:opt-13b:tp1"), kv_capacity_tokens=1000)
    model.breakdown(BatchShape(decode=(499, 499)))
    with pytest.raises(DopdError, match="holds 1000"):
        model.breakdown(BatchShape(decode=(500, 500)))
    with pytest.raises(DopdError, match="KV capacity"):
        FittedLatencyModel(load_calibration("distserve:opt-13b:tp1"), kv_capacity_tokens=0)
