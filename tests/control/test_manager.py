"""The P/D manager on hand-built cluster views: hysteresis, margin, bounds, dwell, fast path,
cheapest instance, phases kept, elastic scaling, and the decision log."""

from __future__ import annotations

import json
import math

import pytest

from dopd.control.manager import (
    Alarm,
    DecisionLog,
    ManagerConfig,
    PDManager,
    Split,
    committed_split,
    to_jsonl,
)
from dopd.control.policies.base import (
    AddInstance,
    ClusterView,
    InstanceView,
    RemoveInstance,
    SwitchRole,
)
from dopd.errors import DopdError
from dopd.types import InstanceState, Role

A = InstanceState.ACTIVE


def inst(i: int, role: Role, state: InstanceState = A, target: Role | None = None,
         queued: int = 0, kv: int = 0, batch: int = 0) -> InstanceView:
    return InstanceView(i, role, state, target, queued, 0, 0, batch, 0, 0, kv, 1000, 0.01, 0)


def view(*instances: InstanceView, now: float = 0.0, budget: int | None = None) -> ClusterView:
    return ClusterView(now, tuple(instances), budget or len(instances), 0, 0)


def split_view(p: int, d: int, now: float = 0.0) -> ClusterView:
    return view(*[inst(i, Role.PREFILL) for i in range(p)],
                *[inst(p + i, Role.DECODE) for i in range(d)], now=now)


def test_on_target_holds_and_committed_counts_transitions() -> None:
    m = PDManager()
    assert m.step(0.0, split_view(2, 2), Split(2, 2)).actions == ()
    v = view(inst(0, Role.PREFILL), inst(1, Role.PREFILL, InstanceState.DRAINING, Role.DECODE),
             inst(2, Role.DECODE), inst(3, Role.DECODE, InstanceState.SWITCHING, Role.PREFILL),
             inst(4, Role.DECODE, InstanceState.DRAINING, None))
    assert committed_split(v) == Split(2, 2)


def test_a_one_step_change_waits_for_confirmation() -> None:
    m = PDManager(ManagerConfig(confirm=2, margin=2))
    first = m.step(0.0, split_view(2, 2), Split(3, 1))
    assert first.actions == () and "confirming 1/2" in first.reason
    second = m.step(5.0, split_view(2, 2, 5.0), Split(3, 1))
    assert [type(a) for a in second.actions] == [SwitchRole]
    assert second.actions[0].role == Role.PREFILL


def test_a_change_that_flips_back_resets_the_confirmation() -> None:
    m = PDManager(ManagerConfig(confirm=2, margin=3))
    assert m.step(0.0, split_view(2, 2), Split(3, 1)).actions == ()
    assert m.step(5.0, split_view(2, 2), Split(1, 3)).actions == ()
    assert m.step(10.0, split_view(2, 2), Split(3, 1)).actions == ()
    assert len(m.step(15.0, split_view(2, 2), Split(3, 1)).actions) == 1


def test_a_large_change_acts_at_once_within_the_change_bound() -> None:
    m = PDManager(ManagerConfig(confirm=3, margin=2, max_changes=1, max_in_flight=4))
    got = m.step(0.0, split_view(1, 5), Split(4, 2))
    assert len(got.actions) == 1
    m2 = PDManager(ManagerConfig(confirm=3, margin=2, max_changes=2, max_in_flight=4))
    assert len(m2.step(0.0, split_view(1, 5), Split(4, 2)).actions) == 2


def test_moving_back_soon_after_a_move_needs_more_confirmation() -> None:
    cfg = ManagerConfig(confirm=1, margin=5, reverse_confirm=3, reverse_window_s=60.0,
                        dwell_s=0.0)
    m = PDManager(cfg)
    assert len(m.step(0.0, split_view(2, 2), Split(3, 1)).actions) == 1
    for t in (10.0, 20.0):
        assert m.step(t, split_view(3, 1, t), Split(2, 2)).actions == ()
    assert len(m.step(30.0, split_view(3, 1, 30.0), Split(2, 2)).actions) == 1
    # Outside the window a reversal is an ordinary change.
    m = PDManager(cfg)
    m.step(0.0, split_view(2, 2), Split(3, 1))
    assert len(m.step(100.0, split_view(3, 1, 100.0), Split(2, 2)).actions) == 1


def test_the_cheapest_instance_moves() -> None:
    v = view(inst(0, Role.PREFILL, queued=9000), inst(1, Role.PREFILL, queued=100),
             inst(2, Role.PREFILL, queued=5000), inst(3, Role.DECODE, kv=500, batch=40),
             inst(4, Role.DECODE, kv=20, batch=3), inst(5, Role.DECODE, kv=300, batch=30))
    m = PDManager(ManagerConfig(confirm=1))
    to_decode = m.step(0.0, v, Split(2, 4)).actions
    assert to_decode == (SwitchRole(1, Role.DECODE, "prefill -> decode"),)
    m = PDManager(ManagerConfig(confirm=1))
    to_prefill = m.step(0.0, v, Split(4, 2)).actions
    assert [a.instance_id for a in to_prefill] == [4]


def test_an_instance_that_just_switched_dwells() -> None:
    m = PDManager(ManagerConfig(confirm=1, dwell_s=20.0, max_in_flight=3))
    switching = view(inst(0, Role.PREFILL), inst(1, Role.PREFILL),
                     inst(2, Role.DECODE, InstanceState.SWITCHING, Role.PREFILL),
                     inst(3, Role.DECODE), now=0.0)
    m.track(0.0, switching)
    # Instance 2 became a prefill instance at t=1; at t=10 only 0 and 1 may move.
    done = view(inst(0, Role.PREFILL, queued=500), inst(1, Role.PREFILL, queued=900),
                inst(2, Role.PREFILL), inst(3, Role.DECODE), now=10.0)
    got = m.step(10.0, done, Split(2, 2))
    assert [a.instance_id for a in got.actions] == [0]
    m = PDManager(ManagerConfig(confirm=1, dwell_s=20.0))
    m.track(0.0, switching)
    only = view(inst(0, Role.PREFILL), inst(2, Role.PREFILL), inst(3, Role.DECODE),
                inst(4, Role.DECODE), now=10.0)
    m2 = m.step(10.0, only, Split(1, 3))
    assert [a.instance_id for a in m2.actions] == [0]
    m3 = PDManager(ManagerConfig(confirm=1, dwell_s=20.0))
    m3.track(0.0, switching)
    blocked = view(inst(2, Role.PREFILL), inst(3, Role.DECODE), inst(4, Role.DECODE),
                   inst(5, Role.PREFILL, InstanceState.DRAINING, Role.DECODE), now=10.0)
    got3 = m3.step(10.0, blocked, Split(0, 4))
    assert got3.actions == ()
    assert m3.step(25.0, view(*blocked.instances, now=25.0), Split(1, 3)).actions == ()


def test_no_move_leaves_a_phase_without_an_active_instance() -> None:
    v = view(inst(0, Role.PREFILL), inst(1, Role.PREFILL, InstanceState.DRAINING, Role.DECODE),
             inst(2, Role.DECODE), inst(3, Role.DECODE))
    got = PDManager(ManagerConfig(confirm=1, max_in_flight=3)).step(0.0, v, Split(0, 4))
    assert got.actions == ()


def test_transitions_in_flight_are_bounded() -> None:
    v = view(inst(0, Role.PREFILL), inst(1, Role.PREFILL),
             inst(2, Role.DECODE, InstanceState.DRAINING, Role.PREFILL), inst(3, Role.DECODE),
             inst(4, Role.DECODE), inst(5, Role.DECODE))
    got = PDManager(ManagerConfig(confirm=1, max_in_flight=1)).step(0.0, v, Split(4, 2))
    assert got.actions == () and "in transition" in got.reason
    got = PDManager(ManagerConfig(confirm=1, max_in_flight=2)).step(0.0, v, Split(4, 2))
    assert len(got.actions) == 1


def test_an_alarm_bypasses_hysteresis_only_towards_the_short_side() -> None:
    cfg = ManagerConfig(confirm=3, margin=5, max_changes=1, alarm_changes=2, max_in_flight=4)
    towards = PDManager(cfg).step(0.0, split_view(2, 4), Split(4, 2), Alarm(prefill=True))
    assert len(towards.actions) == 2 and towards.fast
    away = PDManager(cfg).step(0.0, split_view(2, 4), Split(4, 2), Alarm(decode=True))
    assert away.actions == ()
    assert not Alarm().active


def test_a_fixed_pool_rejects_a_target_of_another_size() -> None:
    with pytest.raises(DopdError):
        PDManager().step(0.0, split_view(2, 2), Split(2, 3))
    with pytest.raises(DopdError):
        ManagerConfig(confirm=0)
    with pytest.raises(DopdError):
        ManagerConfig(switch=False, elastic=False)


def test_elastic_adds_within_budget_and_removes_after_confirmation() -> None:
    cfg = ManagerConfig(confirm=1, switch=False, elastic=True, scale_in_confirm=2,
                        max_changes=4, max_in_flight=4, dwell_s=0.0)
    small = view(inst(0, Role.PREFILL), inst(1, Role.DECODE), budget=4)
    adds = PDManager(cfg).step(0.0, small, Split(2, 3))
    assert adds.actions == (AddInstance(Role.PREFILL, "scale out prefill"),
                            AddInstance(Role.DECODE, "scale out decode"))
    m = PDManager(cfg)
    big = view(inst(0, Role.PREFILL), inst(1, Role.PREFILL), inst(2, Role.DECODE),
               inst(3, Role.DECODE, kv=10), budget=4)
    assert m.step(0.0, big, Split(2, 1)).actions == ()
    removed = m.step(5.0, big, Split(2, 1)).actions
    assert removed == (RemoveInstance(2, "scale in decode"),)  # 3 holds KV: dearer
    # Survivors that cannot absorb the load keep the instance.
    m = PDManager(cfg)
    m.step(0.0, big, Split(2, 1), can_remove=lambda role: False)
    assert m.step(5.0, big, Split(2, 1), can_remove=lambda role: False).actions == ()


def test_decision_log_settles_predictions_and_writes_json_lines() -> None:
    log = DecisionLog("dopd")
    log.add(1.0, reason="r", actions=[SwitchRole(3, Role.DECODE, "x")], target=Split(1, 3),
            current=Split(2, 2), observation={"rate": 5.0, "bad": math.inf},
            predicted={"ttft_p90": 0.2})
    log.add(2.0, reason="hold")
    assert log.settle(1.0, {"ttft_p90": 0.3}) == 0  # nothing before t=1
    assert log.settle(6.0, {"ttft_p90": 0.3, "tpot_p90": math.nan}) == 1
    assert log.settle(7.0, {"ttft_p90": 0.4}) == 0  # settled once
    lines = to_jsonl(log.records).splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["actions"] == [{"action": "SwitchRole", "instance_id": 3, "role": "decode",
                                 "reason": "x", "migrate": False, "in_place": False}]
    assert first["target"] == {"prefill": 1, "decode": 3, "mixed": 0}
    assert first["observation"] == {"rate": 5.0, "bad": None}
    assert first["observed"] == {"t": 6.0, "ttft_p90": 0.3, "tpot_p90": None}
    assert json.loads(lines[1])["observed"] is None and log.action_count() == 1
