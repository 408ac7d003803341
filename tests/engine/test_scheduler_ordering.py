"""Prefill queue order: FCFS by default, short-first with aging (no starvation), work ahead."""

from __future__ import annotations

import numpy as np
import pytest

from dopd.engine import BlockManager, Scheduler, SchedulerConfig, StepResult
from dopd.errors import DopdError
from dopd.types import Role


def make(order: str = "fcfs", budget: int = 1000, aging_s: float = 1e9, max_passes: int = 10**6,
         num_blocks: int = 100_000, role: Role = Role.PREFILL, max_num_seqs: int = 256
         ) -> Scheduler:
    config = SchedulerConfig(max_batched_tokens=budget, max_num_seqs=max_num_seqs,
                             chunked_prefill=True, watermark=0.0, queue_order=order,
                             aging_s=aging_s, max_passes=max_passes)
    return Scheduler(config, BlockManager(num_blocks, 16, 0.0), role)


def step(s: Scheduler, now: float = 0.0) -> list[int]:
    """Run one step; returns the requests whose prefill started in it (in order). Prefilled
    requests are released at once (a prefill instance handing its KV over)."""
    s.age(now)
    plan = s.schedule()
    assert plan is not None
    started = [c.request_id for c in plan.prefill if c.cached_tokens == 0]
    out = s.complete(plan, StepResult(plan.step_id, 0.01, (0,) * len(plan.sampling_ids)))
    for rid in out.prefilled:
        s.release(rid)
    s.check()
    return started


def drain(s: Scheduler) -> list[int]:
    order: list[int] = []
    while s.num_requests:
        order += step(s)
    return order


def test_fcfs_is_the_default_and_keeps_arrival_order() -> None:
    assert SchedulerConfig().queue_order == "fcfs"
    s = make(budget=500)
    lengths = [400, 50, 300, 20, 490, 10]
    for rid, n in enumerate(lengths):
        s.add_request(rid, n, 2)
    assert drain(s) == list(range(len(lengths)))


def test_short_first_admits_the_shortest_prompt_first() -> None:
    s = make("short-first", budget=500)
    lengths = [400, 50, 300, 20, 490, 10, 50]
    for rid, n in enumerate(lengths):
        s.add_request(rid, n, 2)
    # Equal lengths keep arrival order (1 before 6).
    assert drain(s) == [5, 3, 1, 6, 2, 0, 4]


def test_zero_passes_is_fcfs() -> None:
    s = make("short-first", budget=500, max_passes=0)
    lengths = [400, 50, 300, 20, 490, 10]
    for rid, n in enumerate(lengths):
        s.add_request(rid, n, 2)
    assert drain(s) == list(range(len(lengths)))


def test_without_aging_a_stream_of_short_prompts_starves_a_long_one() -> None:
    # Two short prompts arrive per step and fill the budget: the long prompt never runs
    # while the stream lasts. With max_passes = 5, it runs after at most 5 later arrivals.
    for passes, expect_starved in ((10**6, True), (5, False)):
        s = make("short-first", budget=100, max_passes=passes)
        s.add_request(0, 90, 2)
        started_at = None
        next_id = 1
        for k in range(50):
            for _ in range(2):
                s.add_request(next_id, 50, 2)
                next_id += 1
            started = step(s, now=float(k))
            if 0 in started:
                started_at = next_id - 1 - len(started)  # later arrivals admitted before it
                break
        if expect_starved:
            assert started_at is None
        else:
            assert started_at is not None and started_at <= 5


def test_a_prompt_that_waited_aging_s_goes_before_every_later_arrival() -> None:
    s = make("short-first", budget=100, aging_s=3.0)
    s.add_request(0, 90, 2, now=0.0)
    next_id = 1
    started: list[int] = []
    for k in range(10):
        now = float(k)
        for _ in range(2):
            s.add_request(next_id, 50, 2, now=now)
            next_id += 1
        started += step(s, now)
        if 0 in started:
            break
    # Aged at t = 3 (waited 3 s): started in that step, before the prompts that arrived since.
    assert started.index(0) == 6
    assert started[:6] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(("seed", "max_passes", "aging_s"), [(0, 3, 1e9), (1, 8, 2.5), (2, 0, 1.0),
                                                            (3, 20, 0.5)])
def test_random_streams_never_exceed_the_aging_bounds(seed: int, max_passes: int,
                                                      aging_s: float) -> None:
    """Starvation freedom: a prompt is passed by at most ``max_passes`` later arrivals, and by
    none that started after it had waited ``aging_s`` (checked at each step)."""
    rng = np.random.default_rng(seed)
    s = make("short-first", budget=256, aging_s=aging_s, max_passes=max_passes, num_blocks=400,
             max_num_seqs=6)
    arrived: dict[int, float] = {}
    started_at: dict[int, float] = {}
    start_rank: dict[int, int] = {}
    next_id = 0
    rank = 0
    now = 0.0
    for _ in range(600):
        for _ in range(int(rng.integers(0, 4))):
            n = int(rng.choice([int(rng.integers(1, 40)), int(rng.integers(200, 1500))]))
            s.add_request(next_id, n, 2, now=now)
            arrived[next_id] = now
            next_id += 1
        if s.num_requests:
            for rid in step(s, now):
                started_at[rid] = now
                start_rank[rid] = rank
                rank += 1
        if rng.random() < 0.05 and s.num_waiting:
            victim = int(rng.choice([r for r in arrived if r not in started_at]))
            s.abort(victim)
            arrived.pop(victim)
        now += 0.1
    while s.num_requests:
        for rid in step(s, now):
            started_at[rid] = now
            start_rank[rid] = rank
            rank += 1
        now += 0.1
    assert set(started_at) == set(arrived)
    most = 0
    for rid in arrived:
        passed_by = [r for r in arrived if r > rid and start_rank[r] < start_rank[rid]]
        assert len(passed_by) <= max_passes, (rid, passed_by)
        most = max(most, len(passed_by))
        aged_at = arrived[rid] + aging_s
        late = [r for r in passed_by if started_at[r] > aged_at + 1e-9]
        assert not late, (rid, late)
    assert most > 0 or max_passes == 0  # short prompts did overtake long ones


def test_preempted_requests_still_go_first() -> None:
    s = make("short-first", budget=64, num_blocks=12, role=Role.MIXED)
    s.add_request(0, 40, 60)
    s.add_request(1, 40, 60)
    preempted = False
    for _ in range(200):
        plan = s.schedule()
        if plan is None:
            break
        out = s.complete(plan, StepResult(plan.step_id, 0.01, (0,) * len(plan.sampling_ids)))
        s.check()
        if out.preempted:
            preempted = True
            s.add_request(10 + len(out.preempted), 5, 2)  # a shorter new prompt
            assert s.has_preempted_waiting()
    assert preempted
    assert s.num_requests == 0


def test_prefill_work_ahead_depends_on_the_order() -> None:
    lengths = [400, 50, 300, 20]
    for order in ("fcfs", "short-first"):
        s = make(order, budget=10)
        for rid, n in enumerate(lengths):
            s.add_request(rid, n, 2)
        s.check()
        tokens, attn, count = s.prefill_work_ahead(100)
        if order == "fcfs":
            assert (tokens, attn, count) == (770, sum(n * n for n in lengths), 4)
            assert (tokens, attn) == (s.queued_prefill_tokens, s.queued_prefill_attn)
        else:
            assert (tokens, attn, count) == (70, 50 * 50 + 20 * 20, 2)
            assert s.prefill_work_ahead(10**6)[:2] == (s.queued_prefill_tokens,
                                                       s.queued_prefill_attn)
        # One step: a prompt is in progress (chunked); it counts in any order.
        step(s)
        tokens, _, count = s.prefill_work_ahead(1)
        assert tokens == (s.queued_prefill_tokens if order == "fcfs" else 20 - 10)
        assert count == (4 if order == "fcfs" else 1)


def test_drain_keeps_preempted_and_returns_new_prompts() -> None:
    s = make("short-first", budget=50)
    for rid, n in enumerate([300, 30, 200]):
        s.add_request(rid, n, 2)
    step(s)  # request 1 (30 tokens) and a 20-token chunk of request 2 start
    taken = s.take_unstarted()
    assert [rid for rid, _, _ in taken] == [0]
    s.check()
    s.add_request(7, 10, 2)
    assert drain(s) == [7]
    assert s.final_kv_sum == 0


def test_final_kv_sum_counts_every_request_until_it_leaves() -> None:
    s = make(budget=100, role=Role.DECODE)
    s.add_request(1, 30, 5)
    assert s.reserve_remote(2, 20, 1, 10)
    assert s.final_kv_sum == (30 + 5 - 1) + (20 + 10 - 1)
    s.admit_remote(2)
    while s.num_requests:
        step(s)
    assert s.final_kv_sum == 0


def test_bad_queue_settings_are_rejected() -> None:
    with pytest.raises(DopdError, match="queue order"):
        SchedulerConfig(queue_order="lifo")
    with pytest.raises(DopdError, match="aging"):
        SchedulerConfig(aging_s=0.0)
    with pytest.raises(DopdError, match="passes"):
        SchedulerConfig(max_passes=-1)
