"""Multi-step decode runs: the same results as stepping one by one, and latency-model timing."""

from __future__ import annotations

import numpy as np
import pytest

from dopd.engine import (
    BlockManager,
    FinishReason,
    LatencyModelRunner,
    Scheduler,
    SchedulerConfig,
)
from dopd.errors import DopdError
from dopd.perf.base import BatchShape, LatencyModel, StepBreakdown
from dopd.types import Role


class AffineLatency(LatencyModel):
    """Stand-in: 5 ms + 0.05 ms per token + 1 us per attention pair + 2 us per KV token."""

    def __init__(self) -> None:
        self.name = "affine"
        self.kv_capacity_tokens = None

    def step_time(self, prefill_new_tokens: int, prefill_attn_sum: int, prefill_count: int,
                  decode_count: int, decode_ctx_sum: int) -> float:
        tokens = prefill_new_tokens + decode_count
        if tokens == 0:
            return 0.0
        return (5e-3 + 5e-5 * tokens + 1e-9 * prefill_attn_sum
                + 2e-6 * (decode_ctx_sum + decode_count))

    def decode_coefficients(self, decode_count: int) -> tuple[float, float]:
        return self.step_time(0, 0, 0, decode_count, 0) if decode_count else 0.0, 2e-6

    def breakdown(self, batch: BatchShape) -> StepBreakdown:
        raise NotImplementedError


def make(role: Role = Role.MIXED, num_blocks: int = 400, block_size: int = 8) -> Scheduler:
    return Scheduler(SchedulerConfig(max_batched_tokens=256), BlockManager(num_blocks, block_size,
                                                                           0.0), role)


def drive(s: Scheduler, runner: LatencyModelRunner, arrivals: list[tuple[float, int, int, int]],
          use_runs: bool) -> tuple[dict[int, float], int]:
    """Run requests (time, id, prompt, max_tokens) to completion; returns finish times, steps."""
    t = 0.0
    pending = sorted(arrivals)
    finish: dict[int, float] = {}
    events = 0
    while pending or s.num_requests:
        while pending and pending[0][0] <= t:
            _, rid, prompt, out = pending.pop(0)
            s.add_request(rid, prompt, out)
        k = s.decode_run_limit(10**9) if use_runs else 0
        if k:
            run = s.begin_decode_run(k)
            assert run is not None and run.steps == k
            steps = k
            if pending:  # cut the run at the next arrival, as the simulator does
                steps = min(k, runner.steps_within(run, pending[0][0] - t) + 1)
            t += runner.run_time(run, steps)
            out = s.end_decode_run(steps)
        else:
            plan = s.schedule()
            if plan is None:
                t = pending[0][0]
                continue
            res = runner.execute(plan)
            t += res.duration_s
            out = s.complete(plan, res)
        events += 1
        for rid, reason in out.finished:
            assert reason == FinishReason.LENGTH
            finish[rid] = t
        s.blocks.check()
    return finish, events


def workload(seed: int, n: int = 60) -> list[tuple[float, int, int, int]]:
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(0.05, n))
    return [(float(times[i]), i, int(rng.integers(5, 200)), int(rng.integers(1, 120)))
            for i in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decode_runs_match_single_steps(seed: int) -> None:
    runner = LatencyModelRunner(AffineLatency())
    arrivals = workload(seed)
    single, single_events = drive(make(), runner, arrivals, use_runs=False)
    runs, run_events = drive(make(), runner, arrivals, use_runs=True)
    assert single.keys() == runs.keys() == {a[1] for a in arrivals}
    for rid, t in single.items():
        assert runs[rid] == pytest.approx(t, rel=1e-9, abs=1e-9)
    assert run_events < single_events / 3


def test_decode_runs_match_under_memory_pressure() -> None:
    runner = LatencyModelRunner(AffineLatency())
    arrivals = workload(5, n=40)
    single, _ = drive(make(num_blocks=60), runner, arrivals, use_runs=False)
    runs, _ = drive(make(num_blocks=60), runner, arrivals, use_runs=True)
    assert single.keys() == runs.keys()
    for rid, t in single.items():
        assert runs[rid] == pytest.approx(t, rel=1e-9, abs=1e-9)


def test_run_limit_stops_at_the_first_finish_and_at_memory() -> None:
    s = make(role=Role.DECODE, num_blocks=40, block_size=4)
    assert s.reserve_remote(1, 10, 1, 30)  # KV 10 tokens: 3 blocks
    assert s.reserve_remote(2, 10, 1, 8)
    s.admit_remote(1)
    s.admit_remote(2)
    assert s.decode_run_limit(100) == 7  # request 2 needs 7 more tokens
    assert s.decode_run_limit(3) == 3
    run = s.begin_decode_run(7)
    assert run is not None
    assert (run.decode_count, run.ctx_sum_start, run.steps) == (2, 20, 7)
    out = s.end_decode_run(7)
    assert out.finished == ((2, FinishReason.LENGTH),)
    assert s.generated(1) == 8 and s.decode_kv_sum == 17 and s.blocks.held(1) == 5
    assert s.decode_run_limit(1000) == 22  # request 1 finishes first (30 - 8)
    s.blocks.reserve(s.blocks.free_blocks - 2)
    # 5 held + 2 free blocks hold 28 tokens: KV 17 -> 28 in 11 steps, not 12.
    assert s.decode_run_limit(1000) == 11
    s.blocks.check()


def test_a_cut_run_admits_new_work_at_the_boundary() -> None:
    s = make(role=Role.DECODE)
    assert s.reserve_remote(1, 10, 1, 50)
    s.admit_remote(1)
    assert s.reserve_remote(2, 10, 1, 50)
    run = s.begin_decode_run(100)
    assert run is not None and run.steps == 49
    s.admit_remote(2)  # arrives mid-run: joins when the run ends
    assert s.decode_run_limit(10) == 0
    s.abort(1)  # deferred to the end of the run
    out = s.end_decode_run(5)
    assert out.finished == ()
    assert not s.has(1) and s.running_ids() == [2]
    assert s.decode_kv_sum == 10
    with pytest.raises(DopdError):
        s.end_decode_run(1)
    s.blocks.check()
    s.abort(2)
    assert s.begin_decode_run(10) is None  # nothing to decode


def test_runner_times_match_the_latency_model() -> None:
    model = AffineLatency()
    runner = LatencyModelRunner(model)
    s = make()
    s.add_request(1, 100, 20)
    plan = s.schedule()
    assert plan is not None
    res = runner.execute(plan)
    assert res.duration_s == pytest.approx(5e-3 + 5e-5 * 100 + 1e-9 * 100 * 100)
    assert res.tokens == (0,)
    s.complete(plan, res)
    run = s.begin_decode_run(10)
    assert run is not None and run.steps == 10
    expected = sum(model.step_time(0, 0, 0, 1, 100 + i) for i in range(10))
    assert runner.run_time(run) == pytest.approx(expected)
    assert runner.steps_within(run, expected * 0.55) == 5
    assert runner.steps_within(run, 1e9) == 10
