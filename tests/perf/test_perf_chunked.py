"""The chunked-prefill calibration form, fitted and checked on mixed steps from the profiles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dopd.errors import DopdError
from dopd.perf import build_latency_model
from dopd.perf.calibration import StepSample, fit_calibration, load_calibration
from dopd.perf.chunked import ChunkedCoefficients, ChunkedLatencyModel
from dopd.perf.chunked_calibration import (
    StepMeasurement,
    chunked_from_dict,
    chunked_to_dict,
    fit_chunked,
    read_measurements,
    relative_errors,
    write_measurements,
)
from dopd.perf.fitted import FittedLatencyModel
from dopd.perf.profiled import ProfileLatencyModel


def profile_steps(seed: int = 0) -> tuple[list[StepMeasurement], list[StepMeasurement]]:
    """Prefill-only and decode-only steps to fit on, mixed steps to check, all timed by the
    Vidur A100 profile model (Llama-3-8B, TP 1) at seeded random shapes."""
    model = ProfileLatencyModel("llama-3-8b", "a100-80gb", 1)
    rng = np.random.default_rng(seed)

    def lu(lo: int, hi: int) -> int:
        return int(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    def step(chunks: list[tuple[int, int]], decodes: list[int]) -> StepMeasurement:
        n, a = sum(c for c, _ in chunks), sum(c * (c + h) for c, h in chunks)
        sums = (n, a, len(chunks), len(decodes), sum(decodes))
        return StepMeasurement(*sums, step_ms=model.step_time(*sums) * 1e3)

    fit = [step([(lu(16, 4096), 0) for _ in range(int(rng.integers(1, 4)))], [])
           for _ in range(40)]
    fit += [step([], [lu(64, 4000) for _ in range(lu(1, 256))]) for _ in range(40)]
    mixed = [step([(lu(16, 2048), int(rng.choice([0, lu(16, 4000)])))],
                  [lu(64, 4000) for _ in range(lu(1, 128))]) for _ in range(200)]
    return fit, mixed


def test_chunked_form_holds_on_mixed_steps_it_never_saw() -> None:
    fit, mixed = profile_steps()
    assert {s.kind for s in fit} == {"prefill", "decode"} and {s.kind for s in mixed} == {"mixed"}
    result = fit_chunked(fit)
    err = np.abs(relative_errors(result.coefficients, mixed))
    print(f"chunked form on mixed steps: median {100 * np.median(err):.1f} %, "
          f"p90 {100 * np.quantile(err, 0.9):.1f} %, worst {100 * err.max():.1f} %")
    # within 10 % on mixed steps (the residual is the GEMM tile quantisation in the profile)
    assert np.median(err) <= 0.05 and np.quantile(err, 0.9) <= 0.10
    # DistServe's per-phase form with its mixing rule, fitted on the same steps, does worse
    samples = [StepSample("prefill", s.prefill_count, s.prefill_new_tokens, s.prefill_attn_sum,
                          0, s.step_ms) if s.kind == "prefill"
               else StepSample("decode", s.decode_count, 0, 0, s.decode_ctx_sum, s.step_ms)
               for s in fit]
    ds = FittedLatencyModel(fit_calibration(samples).coefficients)
    ds_err = np.abs([ds.step_time(*s.sums()) * 1e3 / s.step_ms - 1 for s in mixed])
    assert np.quantile(ds_err, 0.9) > np.quantile(err, 0.9)


def test_model_matches_the_form_and_is_affine_in_decode_context() -> None:
    fit, _ = profile_steps(1)
    coeffs = fit_chunked(fit).coefficients
    model = ChunkedLatencyModel(coeffs, 10_000)
    for s in fit[:10]:
        assert model.step_time(*s.sums()) * 1e3 == pytest.approx(coeffs.step_ms(*s.sums()))
    alpha, slope = model.decode_coefficients(12)
    assert model.step_time(0, 0, 0, 12, 5000) == pytest.approx(alpha + slope * 5000)
    times = [model.step_time(n, n * n, 1, 4, 4000) for n in (1, 100, 1000, 5000)]
    assert times == sorted(times)


def test_files_round_trip(tmp_path: Path) -> None:
    fit, mixed = profile_steps(2)
    csv_path = tmp_path / "steps.csv"
    write_measurements(fit + mixed[:10], csv_path)
    assert read_measurements(csv_path) == [
        StepMeasurement(*s.sums(), step_ms=float(f"{s.step_ms:.6g}")) for s in fit + mixed[:10]]
    from_csv = load_calibration(csv_path)
    assert isinstance(from_csv, ChunkedCoefficients)
    json_path = tmp_path / "fit.json"
    json_path.write_text(json.dumps({**chunked_to_dict(from_csv), "note": "kept for people"}))
    assert load_calibration(json_path) == from_csv
    model = build_latency_model("llama-3-8b", "a100-80gb", 1, calibration=str(json_path))
    assert isinstance(model, ChunkedLatencyModel)
    with pytest.raises(DopdError, match="hinges"):
        chunked_from_dict({"form": "chunked", "coefficients": {**chunked_to_dict(from_csv)[
            "coefficients"], "hinges": "x"}})  # type: ignore[dict-item]
    with pytest.raises(DopdError, match=">= 6"):
        fit_chunked(fit[:3])
