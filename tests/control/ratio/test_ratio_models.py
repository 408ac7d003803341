"""Instance cost tables, per-side predictions and the fluid backlog."""

from __future__ import annotations

import numpy as np
import pytest

from dopd.control.ratio.arrivals import ArrivalSeries
from dopd.control.ratio.backlog import backlog_entries, mean_backlog
from dopd.control.ratio.decode import decode_shape, max_batch_for_tpot, predict_decode
from dopd.control.ratio.instance import InstanceModel
from dopd.control.ratio.prefill import predict_prefill
from dopd.control.ratio.stats import WorkloadStats
from dopd.errors import DopdError
from dopd.perf import KVTransferModel, RooflineLatencyModel, kv_bytes_per_token


@pytest.fixture(scope="module")
def latency() -> RooflineLatencyModel:
    return RooflineLatencyModel("llama-3-8b", "a100-80gb", 1, "modern")


@pytest.fixture(scope="module")
def inst(latency: RooflineLatencyModel) -> InstanceModel:
    return InstanceModel.build(
        latency, 400_000, kv_bytes_per_token=kv_bytes_per_token("llama-3-8b"),
        transfer=KVTransferModel.from_hardware("a100-80gb"))


def test_prefill_tables_follow_the_latency_model(inst: InstanceModel,
                                                 latency: RooflineLatencyModel) -> None:
    n = np.array([100.0, 1000.0, 4096.0])
    solo, fixed, var = inst.prefill_tables(n)
    want = [latency.step_time(int(x), int(x * x), 1, 0, 0) for x in n]
    assert solo == pytest.approx(want, rel=0.02)
    assert np.all(fixed >= 0) and np.all(var > 0)
    # Batching amortises the fixed part: 81 prompts of 100 tokens fill one 8192-token step.
    k = inst.batch_limit(np.array([100.0]))[0]
    assert k == 81
    full = latency.step_time(8100, 8100 * 100, 81, 0, 0) / 81
    assert var[0] + fixed[0] / k == pytest.approx(full, rel=0.02)


def test_long_prompts_are_chunked(inst: InstanceModel, latency: RooflineLatencyModel) -> None:
    solo, _, _ = inst.prefill_tables(np.array([16384.0]))
    chunks = latency.step_time(8192, 8192 * 8192, 1, 0, 0) + latency.step_time(
        8192, 8192 * 16384, 1, 0, 0)
    assert solo[0] == pytest.approx(chunks, rel=1e-6)


def test_decode_step_matches_latency_model(inst: InstanceModel,
                                           latency: RooflineLatencyModel) -> None:
    got = inst.decode_step(np.array([1.0, 32.0, 200.0]), 1500.0)
    want = [latency.step_time(0, 0, 0, b, b * 1500) for b in (1, 32, 200)]
    assert got == pytest.approx(want, rel=1e-9)
    assert inst.transfer_time(np.array([1000.0]))[0] > inst.transfer_time(np.array([10.0]))[0]


def test_prefill_predictions_improve_with_instances(inst: InstanceModel) -> None:
    stats = WorkloadStats.from_moments(6.0, 1500.0, 1.0, 200.0, 1.0)
    pred = predict_prefill(inst, stats, [1, 2, 3, 4], 6.0, ttft_slo=0.5)
    assert np.all(np.diff(pred.utilisation) < 0)
    assert np.all(np.diff(pred.attainment) >= 0)
    assert np.all(np.diff(pred.ttft_mean) <= 0)
    assert pred.capacity[1] == pytest.approx(2 * pred.capacity[0])
    # The CDF is a CDF: monotone in t, 0 before any service, 1 far out.
    t = np.array([0.0, 0.1, 0.3, 1.0, 100.0])
    cdf = pred.cdf(t, np.full(t.size, 1))
    assert cdf[0] == 0.0 and cdf[-1] == pytest.approx(1.0)
    assert np.all(np.diff(cdf) >= 0)


def test_overloaded_prefill_meets_nothing(inst: InstanceModel) -> None:
    stats = WorkloadStats.from_moments(500.0, 4000.0, 1.0, 200.0, 1.0)
    pred = predict_prefill(inst, stats, [1], 500.0, ttft_slo=10.0)
    assert pred.utilisation[0] >= 1.0
    assert pred.attainment[0] == 0.0
    assert not np.isfinite(pred.ttft_mean[0])


def test_correction_scale_shifts_ttft(inst: InstanceModel) -> None:
    stats = WorkloadStats.from_moments(6.0, 1500.0, 1.0, 200.0, 1.0)
    base = predict_prefill(inst, stats, [2], 6.0, ttft_slo=0.3)
    slow = predict_prefill(inst, stats, [2], 6.0, ttft_slo=0.3, scale=2.0)
    assert slow.ttft_mean[0] == pytest.approx(2 * base.ttft_mean[0])
    assert slow.attainment[0] < base.attainment[0]


def test_decode_batch_is_the_little_fixed_point(inst: InstanceModel) -> None:
    stats = WorkloadStats.from_moments(20.0, 800.0, 0.5, 300.0, 0.5)
    pred = predict_decode(inst, stats, [1, 2, 4], 20.0, tpot_slo=0.013)
    shape = decode_shape(inst, stats)
    demand = 20.0 * shape.steps_mean / pred.servers
    assert pred.batch == pytest.approx(demand * pred.step_s, rel=0.01)
    assert np.all(np.diff(pred.batch) < 0)
    assert np.all(np.diff(pred.tpot_mean) < 0)
    assert pred.attainment[0] < 0.01 < pred.attainment[1] < 0.99 < pred.attainment[2]


def test_b_star_is_largest_feasible_batch(inst: InstanceModel) -> None:
    stats = WorkloadStats.from_moments(1.0, 2000.0, 0.5, 500.0, 0.5)
    shape = decode_shape(inst, stats)
    slo = 0.03
    b = max_batch_for_tpot(inst, shape, slo)
    step = inst.decode_step(np.arange(1, 257, dtype=float), shape.ctx_mean)
    assert b == int(np.flatnonzero(step <= slo).max()) + 1
    assert max_batch_for_tpot(inst, shape, 1e-6) == 0
    assert max_batch_for_tpot(inst, shape, slo / 2) < b


def test_one_token_outputs_do_not_decode(inst: InstanceModel) -> None:
    stats = WorkloadStats.from_moments(1.0, 100.0, 0.5, 1.0, 0.0)
    with pytest.raises(DopdError, match="single token"):
        predict_decode(inst, stats, [1], 1.0, tpot_slo=0.05)


def _lindley(work: np.ndarray, k: float, width: float, sub: int = 200) -> np.ndarray:
    """Time-averaged backlog per window by direct fine-step integration."""
    b, out = 0.0, []
    for x in work:
        rate = x / k / width  # work arrives uniformly over the window
        acc = 0.0
        for _ in range(sub):
            b = max(0.0, b + (rate - 1.0) * width / sub)
            acc += b
        out.append(acc / sub)
    return np.array(out)


def test_mean_backlog_matches_direct_integration() -> None:
    rng = np.random.default_rng(0)
    work = rng.exponential(1.0, 40) * np.where(rng.random(40) < 0.2, 4.0, 1.0)
    width = 1.0
    got = mean_backlog(work, [1, 2, 4], width)
    for i, k in enumerate((1, 2, 4)):
        assert got[i] == pytest.approx(_lindley(work, k, width), abs=0.02 * max(1.0, work.max()))
    assert np.all(mean_backlog(np.full(10, 0.5), [1], 1.0) == 0.0)


def test_backlog_entries_weights_sum_to_one() -> None:
    counts = np.array([5.0, 0.0, 12.0, 3.0])
    series = ArrivalSeries(counts, counts * 100, counts * 1e4, np.array([0, 0, 1, 0]),
                           np.array([0.8, 1.6]), np.array([8 / 20, 12 / 20]), 5.0)
    delay = np.array([[0.0, 0.0, 2.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    e = backlog_entries(delay, series)
    sums = np.bincount(e.count_index, weights=e.weight)
    assert sums == pytest.approx([1.0, 1.0])
    assert np.all(np.diff(e.count_index) >= 0)
    mean_delay = np.bincount(e.count_index, weights=e.weight * e.delay)
    assert mean_delay == pytest.approx([(12 * 2.0 + 3 * 0.5) / 20, 0.0])
