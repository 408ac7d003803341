"""Continuous-batching scheduler: budgets, chunking, roles, remote decodes, preemption, abort."""

from __future__ import annotations

import pytest

from dopd.engine import (
    BlockManager,
    FinishReason,
    Scheduler,
    SchedulerConfig,
    SeqStatus,
    StepOutcome,
    StepPlan,
    StepResult,
)
from dopd.errors import DopdError
from dopd.types import Role


def make(num_blocks: int = 1000, block_size: int = 16, role: Role = Role.MIXED,
         watermark: float = 0.0, **cfg: object) -> Scheduler:
    config = SchedulerConfig(watermark=watermark, **cfg)  # type: ignore[arg-type]
    return Scheduler(config, BlockManager(num_blocks, block_size, watermark), role)


def result(plan: StepPlan, stopped: tuple[int, ...] = ()) -> StepResult:
    return StepResult(plan.step_id, 0.01, (0,) * len(plan.sampling_ids),
                      tuple((rid, FinishReason.STOP) for rid in stopped))


def step(s: Scheduler) -> tuple[StepPlan, StepOutcome]:
    plan = s.schedule()
    assert plan is not None
    return plan, s.complete(plan, result(plan))


def run_to_end(s: Scheduler, limit: int = 100_000) -> dict[int, FinishReason]:
    done: dict[int, FinishReason] = {}
    for _ in range(limit):
        plan = s.schedule()
        if plan is None:
            break
        out = s.complete(plan, result(plan))
        done.update(out.finished)
        s.blocks.check()
    return done


def test_single_request_prefills_then_decodes_to_max_tokens() -> None:
    s = make()
    s.add_request(1, 40, 5)
    assert s.queued_prefill_tokens == 40
    plan, out = step(s)
    assert [(c.request_id, c.new_tokens, c.cached_tokens, c.completes_prompt)
            for c in plan.prefill] == [(1, 40, 0, True)]
    assert plan.prefill[0].block_table == (0, 1, 2)
    assert plan.prefill_attn_sum == 40 * 40 and plan.sampling_ids == (1,)
    assert out.first_token == (1,) and not out.finished
    assert s.queued_prefill_tokens == 0 and s.num_decoding == 1 and s.decode_kv_sum == 40
    contexts = []
    steps = 0
    while s.num_requests:
        plan, out = step(s)
        contexts.append(plan.decode_context[0])
        steps += 1
    assert steps == 4  # tokens 2..5
    assert contexts == [40, 41, 42, 43]
    assert out.finished == ((1, FinishReason.LENGTH),)
    assert s.blocks.free_blocks == 1000 and s.decode_kv_sum == 0


def test_chunked_prefill_splits_a_long_prompt_over_the_budget() -> None:
    s = make(num_blocks=4000, max_batched_tokens=8192)
    s.add_request(7, 20000, 2)
    chunks = []
    for _ in range(3):
        plan, out = step(s)
        chunks.append([(c.new_tokens, c.cached_tokens, c.completes_prompt) for c in plan.prefill])
    assert chunks == [[(8192, 0, False)], [(8192, 8192, False)], [(3616, 16384, True)]]
    assert out.first_token == (7,)
    assert plan.prefill_attn_sum == 3616 * 20000


def test_decodes_go_first_and_prefill_fills_the_remaining_budget() -> None:
    s = make(max_batched_tokens=100)
    for rid in range(3):
        s.add_request(rid, 10, 50)
    step(s)  # all three prompts (30 tokens) in one step
    assert s.num_decoding == 3
    s.add_request(9, 500, 2)
    plan, _ = step(s)
    assert plan.decode_ids == (0, 1, 2)
    assert [(c.request_id, c.new_tokens) for c in plan.prefill] == [(9, 97)]
    assert plan.num_tokens == 100
    assert plan.decode_ctx_sum == sum(plan.decode_context) == 30


def test_prefill_priority_pauses_decodes_while_prompts_wait() -> None:
    s = make(prefill_priority=True, max_batched_tokens=100)
    s.add_request(0, 10, 50)
    step(s)
    s.add_request(1, 60, 5)
    s.add_request(2, 60, 5)
    plan, _ = step(s)
    assert plan.decode_ids == () and [c.request_id for c in plan.prefill] == [1, 2]
    assert [c.new_tokens for c in plan.prefill] == [60, 40]
    plan, _ = step(s)
    assert plan.decode_ids == () and [c.new_tokens for c in plan.prefill] == [20]
    plan, _ = step(s)
    assert set(plan.decode_ids) == {0, 1, 2} and not plan.prefill


def test_without_chunking_a_long_prompt_runs_whole_and_alone() -> None:
    s = make(chunked_prefill=False, max_batched_tokens=100)
    s.add_request(0, 30, 3)
    s.add_request(1, 250, 3)
    s.add_request(2, 30, 3)
    plan, _ = step(s)
    assert [(c.request_id, c.new_tokens) for c in plan.prefill] == [(0, 30)]
    plan, _ = step(s)
    assert [(c.request_id, c.new_tokens) for c in plan.prefill] == [(1, 250)]
    assert plan.prefill[0].completes_prompt


def test_prefill_role_holds_kv_until_released() -> None:
    s = make(role=Role.PREFILL)
    s.add_request(1, 33, 10)
    s.add_request(2, 20, 1)
    _, out = step(s)
    assert out.first_token == (1, 2)
    assert out.prefilled == (1,)
    assert out.finished == ((2, FinishReason.LENGTH),)
    assert s.status(1) == SeqStatus.HELD and s.num_decoding == 0
    assert s.blocks.held(1) == 3
    assert s.schedule() is None
    s.release(1)
    assert s.is_idle and s.blocks.free_blocks == 1000
    with pytest.raises(DopdError):
        s.release(1)


def test_remote_decode_waits_for_memory_then_decodes() -> None:
    s = make(num_blocks=10, block_size=16, role=Role.DECODE)
    assert s.reserve_remote(1, 100, 1, 4)  # 100 tokens of KV: 7 blocks
    assert not s.reserve_remote(2, 100, 1, 4)  # not enough room yet
    assert not s.has(2)
    assert s.schedule() is None  # KV not arrived
    s.admit_remote(1)
    plan, _ = step(s)
    assert plan.decode_ids == (1,) and plan.decode_context == (100,)
    done = run_to_end(s)
    assert done == {1: FinishReason.LENGTH}
    assert s.reserve_remote(2, 100, 1, 4)


def test_requests_that_can_never_fit_are_refused() -> None:
    s = make(num_blocks=10, block_size=16)
    assert s.fits(100, 61) and not s.fits(100, 62)
    with pytest.raises(DopdError, match="more KV"):
        s.add_request(1, 150, 20)
    with pytest.raises(DopdError, match="more KV"):
        s.reserve_remote(1, 150, 1, 20)


def test_preemption_by_recompute_when_decodes_outgrow_memory() -> None:
    s = make(num_blocks=12, block_size=4)
    for rid in range(4):
        s.add_request(rid, 8, 12)  # each needs up to 19 tokens = 5 blocks; 4 x 5 > 12
    preempted: list[int] = []
    done: dict[int, FinishReason] = {}
    generated_tokens = 0
    for _ in range(1000):
        plan = s.schedule()
        if plan is None:
            break
        out = s.complete(plan, result(plan))
        generated_tokens += len(plan.sampling_ids)
        preempted.extend(out.preempted)
        done.update(out.finished)
        s.blocks.check()
        assert s.blocks.used_blocks <= 12
    assert done == {rid: FinishReason.LENGTH for rid in range(4)}
    assert preempted and s.preemptions == len(preempted)
    assert preempted[0] == 3  # the latest admitted goes first
    # Recompute samples one token per re-prefill, so the token count is exact.
    assert generated_tokens == 4 * 12
    assert s.is_idle and s.blocks.free_blocks == 12


def test_abort_frees_kv_in_every_state() -> None:
    s = make(num_blocks=100, block_size=4, max_batched_tokens=16)
    s.add_request(0, 8, 50)
    step(s)  # 0 decoding
    s.add_request(1, 40, 5)  # will be prefilling (chunked)
    s.add_request(2, 8, 5)  # waiting
    step(s)
    assert s.status(0) == SeqStatus.DECODING
    assert s.status(1) == SeqStatus.PREFILLING
    assert s.status(2) == SeqStatus.WAITING
    assert s.reserve_remote(3, 8, 1, 5)
    for rid in (0, 1, 2, 3):
        assert s.abort(rid)
        s.blocks.check()
    assert not s.abort(3)
    assert s.is_idle and s.blocks.free_blocks == 100
    assert s.queued_prefill_tokens == 0 and s.queued_prefill_attn == 0 and s.decode_kv_sum == 0


def test_runner_stop_finishes_early() -> None:
    s = make()
    s.add_request(1, 10, 100)
    step(s)
    plan = s.schedule()
    assert plan is not None
    out = s.complete(plan, result(plan, stopped=(1,)))
    assert out.finished == ((1, FinishReason.STOP),)
    assert s.is_idle


def test_take_unstarted_returns_only_new_queued_requests() -> None:
    s = make(max_batched_tokens=10)
    s.add_request(0, 30, 3)
    s.add_request(1, 5, 3)
    step(s)  # 0 prefilling
    assert s.take_unstarted() == [(1, 5, 3)]
    assert s.queued_prefill_tokens == 20
    assert not s.has(1)


def test_max_num_seqs_caps_running_requests() -> None:
    s = make(max_num_seqs=2)
    for rid in range(3):
        s.add_request(rid, 10, 5)
    plan, _ = step(s)
    assert [c.request_id for c in plan.prefill] == [0, 1]
    assert s.num_waiting == 1
    assert not s.reserve_remote(9, 10, 1, 5)
