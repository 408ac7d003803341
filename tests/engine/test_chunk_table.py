"""The per-step prompt budget of MIXED instances (:class:`ChunkTable`): validated, looked up
linearly in decode count, context and chunk position with a floor, and applied by the scheduler
to MIXED steps that carry decodes."""

from __future__ import annotations

import pytest

from dopd.engine import BlockManager, Scheduler, SchedulerConfig, StepResult
from dopd.engine.chunk_table import ChunkTable
from dopd.errors import DopdError
from dopd.types import Role

# tokens[count][context][prefix]; a deeper prefix halves the room
TABLE = ChunkTable(counts=(1, 4, 16), contexts=(512, 2048), prefixes=(0, 1000),
                   tokens=(((1000, 500), (800, 400)), ((700, 350), (400, 200)),
                           ((100, 50), (0, 0))),
                   floor=32, target_s=0.05)


def test_grid_points_are_returned_exactly() -> None:
    assert TABLE.cap(1, 512) == 1000
    assert TABLE.cap(4, 4 * 2048) == 400
    assert TABLE.cap(16, 16 * 512) == 100
    assert TABLE.cap(1, 512, prefix=1000) == 500


def test_between_grid_points_the_cap_is_linear_in_each() -> None:
    assert TABLE.cap(2, 2 * 512) == 900  # a third of the way from 1 to 4 decodes
    assert TABLE.cap(1, 1280) == 900  # half way from 512 to 2048 tokens of context
    assert TABLE.cap(10, 10 * 512) == 400
    assert TABLE.cap(1, 512, prefix=500) == 750  # half way along the prompt


def test_beyond_the_grid_the_edges_hold_and_the_floor_applies() -> None:
    assert TABLE.cap(1, 10) == 1000
    assert TABLE.cap(1, 100_000) == 800
    assert TABLE.cap(500, 500 * 512) == 100
    assert TABLE.cap(1, 512, prefix=50_000) == 500
    assert TABLE.cap(16, 16 * 4096) == 32  # the table says 0: the floor


@pytest.mark.parametrize("kwargs", [
    {"counts": ()}, {"counts": (4, 1, 16)}, {"contexts": (0, 2048)}, {"prefixes": (-1, 1000)},
    {"prefixes": (1000, 0)},
    {"tokens": (((1000, 500), (800, 400)), ((700, 350), (400, 200)))},
    {"tokens": (((1000,), (800,)), ((700,), (400,)), ((100,), (0,)))},
    {"tokens": (((1000, -1), (800, 400)), ((700, 350), (400, 200)), ((100, 50), (0, 0)))},
    {"floor": -1}, {"target_s": 0.0},
])
def test_a_bad_table_is_a_clear_error(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"counts": TABLE.counts, "contexts": TABLE.contexts,
                               "prefixes": TABLE.prefixes, "tokens": TABLE.tokens,
                               "floor": 32, "target_s": 0.05}
    with pytest.raises(DopdError):
        ChunkTable(**{**base, **kwargs})  # type: ignore[arg-type]


def test_a_lookup_without_decodes_or_with_a_negative_prefix_is_an_error() -> None:
    with pytest.raises(DopdError):
        TABLE.cap(0, 0)
    with pytest.raises(DopdError):
        TABLE.cap(1, 512, prefix=-1)


def _step(s: Scheduler) -> tuple[int, int]:
    plan = s.schedule()
    assert plan is not None
    s.complete(plan, StepResult(plan.step_id, 0.01, (0,) * len(plan.sampling_ids), ()))
    return plan.prefill_new_tokens, len(plan.decode_ids)


@pytest.mark.parametrize("role", [Role.MIXED, Role.DECODE])
def test_the_scheduler_caps_a_mixed_step_by_its_decodes_and_chunk_position(role: Role) -> None:
    table = ChunkTable(counts=(1, 2), contexts=(128,), prefixes=(0, 3000),
                       tokens=(((300, 0),), ((100, 0),)), floor=16, target_s=0.05)
    config = SchedulerConfig(max_batched_tokens=2048, mixed_chunk_table=table, watermark=0.0)
    s = Scheduler(config, BlockManager(4000, 16, 0.0), role)
    s.add_request(1, 50, 100)
    assert _step(s) == (50, 0)  # no decode runs: the whole budget
    s.add_request(2, 3000, 100)
    prefill, decodes = _step(s)
    if role == Role.DECODE:  # the cap is a MIXED instance's: a decode instance's bypass is not
        assert (prefill, decodes) == (2047, 1)
        return
    assert (prefill, decodes) == (300, 1)  # a new prompt with one decode: the first entry
    assert _step(s) == (270, 1)  # 300 tokens in: 300 x (1 - 300 / 3000)
    s.add_request(3, 3000, 100)
    while s.num_decoding < 2:
        _step(s)
    assert s.queued_prefill_tokens > 100
    prefill, decodes = _step(s)
    assert decodes == 2 and 16 <= prefill <= 100  # two decodes: the second row
