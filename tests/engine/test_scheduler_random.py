"""Random operation sequences keep the scheduler's books straight and finish every request."""

from __future__ import annotations

import numpy as np
import pytest

from dopd.engine import (
    BlockManager,
    FinishReason,
    Scheduler,
    SchedulerConfig,
    SeqStatus,
    StepResult,
)
from dopd.types import Role


@pytest.mark.parametrize(("seed", "role", "chunked", "priority"), [
    (0, Role.MIXED, True, False),
    (1, Role.MIXED, False, False),
    (2, Role.MIXED, True, True),
    (3, Role.DECODE, True, False),
    (4, Role.PREFILL, True, False),
])
def test_random_operations(seed: int, role: Role, chunked: bool, priority: bool) -> None:
    rng = np.random.default_rng(seed)
    config = SchedulerConfig(max_batched_tokens=64, max_num_seqs=12, chunked_prefill=chunked,
                             prefill_priority=priority, watermark=0.05)
    s = Scheduler(config, BlockManager(48, 4, 0.05), role)
    sampled: dict[int, int] = {}
    max_tokens: dict[int, int] = {}
    ended: dict[int, FinishReason] = {}
    next_id = 0
    for _ in range(2500):
        op = rng.integers(10)
        if op < 3:
            prompt, out = int(rng.integers(1, 60)), int(rng.integers(1, 40))
            if s.fits(prompt, out):
                s.add_request(next_id, prompt, out)
                max_tokens[next_id] = out
            next_id += 1
        elif op == 3 and role != Role.PREFILL:
            prompt, out = int(rng.integers(1, 60)), int(rng.integers(2, 40))
            if s.fits(prompt, out) and s.reserve_remote(next_id, prompt, 1, out):
                max_tokens[next_id] = out
                sampled[next_id] = 1
                if rng.random() < 0.8:
                    s.admit_remote(next_id)
            next_id += 1
        elif op == 4 and max_tokens:
            victim = int(rng.choice(list(max_tokens)))
            if victim not in ended and s.abort(victim):
                ended[victim] = FinishReason.ABORTED
        elif op == 5 and s.num_held:
            for rid in list(max_tokens):
                if rid not in ended and s.status(rid) == SeqStatus.HELD:
                    s.release(rid)
                    ended[rid] = FinishReason.LENGTH
                    break
        else:
            k = s.decode_run_limit(int(rng.integers(1, 30))) if op == 9 else 0
            if k:
                ids = s.running_ids()
                run = s.begin_decode_run(k)
                assert run is not None and run.decode_count == len(ids)
                done = int(rng.integers(0, k + 1))
                out = s.end_decode_run(done)
                for rid in ids:
                    sampled[rid] += done
            else:
                plan = s.schedule()
                if plan is None:
                    continue
                assert plan.num_tokens <= config.max_batched_tokens or not chunked
                stop = tuple((rid, FinishReason.STOP) for rid in plan.sampling_ids
                             if rng.random() < 0.02)
                out = s.complete(plan, StepResult(plan.step_id, 0.01,
                                                  (0,) * len(plan.sampling_ids), stop))
                for rid in plan.sampling_ids:
                    sampled[rid] = sampled.get(rid, 0) + 1
            for rid, reason in out.finished:
                assert rid not in ended
                ended[rid] = reason
                if reason == FinishReason.LENGTH:
                    assert sampled[rid] == max_tokens[rid]
        s.check()
    # Drain: finish everything that is left.
    for _ in range(100_000):
        for rid in list(max_tokens):
            if rid not in ended and s.status(rid) == SeqStatus.RESERVED:
                s.admit_remote(rid)
            elif rid not in ended and s.status(rid) == SeqStatus.HELD:
                s.release(rid)
                ended[rid] = FinishReason.LENGTH
        plan = s.schedule()
        if plan is None:
            break
        out = s.complete(plan, StepResult(plan.step_id, 0.01, (0,) * len(plan.sampling_ids)))
        for rid, reason in out.finished:
            ended[rid] = reason
        s.check()
    assert s.is_idle
    assert (s.preemptions > 0) == (role != Role.PREFILL)
    assert ended.keys() == max_tokens.keys()
    assert s.blocks.free_blocks == s.blocks.num_blocks
