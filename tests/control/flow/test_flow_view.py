"""The one builder of the policy's view."""

from __future__ import annotations

from dataclasses import dataclass

from dopd.control.flow.view import build_view
from dopd.types import InstanceState, Role


@dataclass
class Signals:
    instance_id: int
    role: Role = Role.MIXED
    state: InstanceState = InstanceState.ACTIVE
    target_role: Role | None = None
    queued_prefill_tokens: int = 0
    waiting: int = 0
    prefilling: int = 0
    decode_batch: int = 0
    decode_ctx_sum: int = 0
    pending_decodes: int = 0
    kv_used_blocks: int = 0
    kv_total_blocks: int = 0
    recent_step_s: float = 0.0
    steps: int = 0


def test_view_orders_instances_and_guards_the_cache_size() -> None:
    view = build_view(3.0, [Signals(2, kv_total_blocks=10, kv_used_blocks=5),
                            Signals(0, state=InstanceState.STOPPED)], budget=4, arrived=7,
                      finished=5)
    assert [v.instance_id for v in view.instances] == [0, 2]
    assert view.instances[0].kv_total_blocks == 1  # not reported yet
    assert view.instances[1].kv_use == 0.5
    assert (view.now, view.budget, view.arrived, view.finished) == (3.0, 4, 7, 5)
    assert [v.instance_id for v in view.alive()] == [2]
