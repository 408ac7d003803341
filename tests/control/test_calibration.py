"""The online calibrator: the belief's prior, convergence on a biased noisy truth, robustness,
bounded memory, versions and the prediction-error records."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dopd.control.calibration import CalibratedLatency, CalibrationConfig
from dopd.errors import DopdError
from dopd.perf import build_latency_model
from dopd.perf.base import BatchShape

BASE = build_latency_model("llama-3-8b", "a100-80gb")


def feed(belief: CalibratedLatency, truth_factor: dict[str, float], sigma: float, n: int,
         seed: int = 0, instances: int = 4, t0: float = 0.0) -> None:
    """``n`` observed steps of random batches: prefill steps and decode runs, on ``instances``
    instances, whose true time is the base model's x ``truth_factor[kind]`` x noise."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        noise = math.exp(sigma * rng.standard_normal() - sigma * sigma / 2)
        inst = i % instances
        now = t0 + 0.01 * i
        if i % 2:
            p = int(rng.integers(50, 3000))
            b = int(rng.integers(0, 20))
            ctx = b * 400
            true = BASE.step_time(p, p * p, 1, b, ctx) * truth_factor["prefill"] * noise
            belief.observe_step(now, inst, p, p * p, 1, b, ctx, 1, true)
        else:
            b = int(rng.integers(1, 64))
            ctx = b * int(rng.integers(100, 2000))
            steps = int(rng.integers(1, 8))
            true = BASE.decode_run_time(b, ctx, steps) * truth_factor["decode"] * noise
            belief.observe_step(now, inst, 0, 0, 0, b, ctx, steps, true)


def test_prior_scales_every_prediction() -> None:
    belief = CalibratedLatency(BASE, prior=1.2)
    assert belief.step_time(500, 250_000, 1, 0, 0) == pytest.approx(
        1.2 * BASE.step_time(500, 250_000, 1, 0, 0))
    alpha, slope = belief.decode_coefficients(16)
    base_alpha, base_slope = BASE.decode_coefficients(16)
    assert (alpha, slope) == pytest.approx((1.2 * base_alpha, 1.2 * base_slope))
    assert belief.decode_run_time(16, 8000, 5) == pytest.approx(
        1.2 * BASE.decode_run_time(16, 8000, 5))
    batch = BatchShape(prefill=((100, 0),), decode=(10, 20))
    assert belief.breakdown(batch).step_ms == pytest.approx(1.2 * BASE.breakdown(batch).step_ms)


def test_converges_on_a_biased_noisy_truth_per_kind() -> None:
    # The belief thinks steps take 1.3x the truth's; prefill and decode are off differently.
    belief = CalibratedLatency(BASE, prior=1.3, config=CalibrationConfig())
    truth = {"prefill": 0.9, "decode": 1.1}
    feed(belief, truth, sigma=0.1, n=4000)
    for kind, factor in truth.items():
        assert belief.factor(kind) == pytest.approx(factor, rel=0.04)
        for inst in range(4):
            assert belief.factor(kind, inst) == pytest.approx(factor, rel=0.06)
    assert belief.step_time(800, 640_000, 1, 0, 0) == pytest.approx(
        0.9 * BASE.step_time(800, 640_000, 1, 0, 0), rel=0.04)
    assert belief.version > 0


def test_without_learning_the_factors_stay_but_errors_are_recorded() -> None:
    belief = CalibratedLatency(BASE, prior=1.3, config=None)
    feed(belief, {"prefill": 1.0, "decode": 1.0}, sigma=0.1, n=3000)
    assert belief.factor("prefill") == belief.factor("decode") == pytest.approx(1.3)
    assert belief.version == 0
    belief.flush(100.0)
    errors = [r for r in belief.records if r["what"] == "decode-step"]
    assert errors and all(r["mean_rel_err"] == pytest.approx(0.3, abs=0.03) for r in errors)


def test_one_outlier_moves_the_estimate_by_at_most_alpha_times_clip() -> None:
    config = CalibrationConfig(alpha=0.05, clip=0.5)
    belief = CalibratedLatency(BASE, config=config)
    true = BASE.step_time(1000, 1_000_000, 1, 0, 0)
    belief.observe_step(0.0, 0, 1000, 1_000_000, 1, 0, 0, 1, 1000 * true)
    assert math.log(belief.factor("prefill")) == pytest.approx(0.05 * 0.5)
    belief.observe_step(0.0, 0, 1000, 1_000_000, 1, 0, 0, 1, 0.0)  # ignored
    belief.observe_step(0.0, 0, 1000, 1_000_000, 1, 0, 0, 0, true)  # ignored
    assert math.log(belief.factor("prefill")) == pytest.approx(0.05 * 0.5)


def test_memory_is_bounded_and_config_is_checked() -> None:
    belief = CalibratedLatency(BASE, config=CalibrationConfig(max_instances=8))
    feed(belief, {"prefill": 1.0, "decode": 1.0}, sigma=0.0, n=500, instances=100)
    assert len(belief.instance_log) <= 16
    for bad in ({"alpha": 0.0}, {"alpha": 1.0}, {"clip": 0.0}, {"max_instances": 0},
                {"log_interval_s": 0.0}):
        with pytest.raises(DopdError):
            CalibrationConfig(**bad)
    with pytest.raises(DopdError, match="prior"):
        CalibratedLatency(BASE, prior=0.0)


def test_records_summarise_step_and_ttft_errors_per_interval() -> None:
    belief = CalibratedLatency(BASE, config=CalibrationConfig(log_interval_s=5.0))
    feed(belief, {"prefill": 1.0, "decode": 1.0}, sigma=0.0, n=2000)  # 20 s of observations
    belief.observe_ttft(20.0, 0.4, 0.5)
    belief.observe_ttft(21.0, math.nan, 0.5)  # no prediction: ignored
    belief.flush(21.0)
    steps = [r for r in belief.records if r["what"] == "prefill-step"]
    assert len(steps) >= 4 and all(abs(float(r["mean_rel_err"])) < 1e-9 for r in steps)
    assert all(r["factor"] == pytest.approx(1.0) for r in steps)
    ttft = [r for r in belief.records if r["what"] == "ttft"]
    assert len(ttft) == 1 and ttft[0]["n"] == 1
    assert ttft[0]["mean_rel_err"] == pytest.approx(-0.2)
