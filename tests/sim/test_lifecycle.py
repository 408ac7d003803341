"""Role switches, adding and removing instances, the policy view, stranded requests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from sim_workloads import poisson_workload

from dopd.control.policies.base import (
    Action,
    AddInstance,
    ClusterPolicy,
    ClusterView,
    RemoveInstance,
    SwitchRole,
)
from dopd.errors import DopdError
from dopd.sim.api import SimConfig
from dopd.sim.simulation import build_cluster, collect_result, run_simulation
from dopd.types import InstanceState, RequestOutcome, RequestState, Role

P, D = Role.PREFILL, Role.DECODE


class Script(ClusterPolicy):
    """Starts with ``roles`` and takes ``actions[k]`` at tick ``k`` (seconds with tick_s=1)."""

    name = "script"
    router = "pd-pair"
    wants_ticks = True

    def __init__(self, roles: list[Role], actions: dict[int, list[Action]]) -> None:
        self.roles = roles
        self.actions = actions
        self.views: list[ClusterView] = []

    def initial_roles(self, instances: int) -> list[Role]:
        return list(self.roles)

    def on_tick(self, now: float, view: ClusterView) -> Sequence[Action]:
        self.views.append(view)
        return self.actions.get(round(now), [])


def states_of(policy: Script, index: int) -> list[InstanceState]:
    return [v.instances[index].state for v in policy.views if index < len(v.instances)]


WORK = poisson_workload(300, 20.0, (200, 2000), (20, 300), seed=11)


def test_role_switch_drains_then_serves_the_new_role() -> None:
    config = SimConfig(instances=4, role_switch_s=2.0)
    policy = Script([P, P, D, D], {3: [SwitchRole(0, D, reason="test")]})
    cluster = build_cluster(WORK, config, policy)
    cluster.run()
    cluster.check()
    result = collect_result(cluster, 0.0)
    assert np.all(result.state == int(RequestState.FINISHED))
    assert result.switches == 1
    assert result.decisions[0]["action"] == "SwitchRole"
    assert result.decisions[0]["reason"] == "test"
    seen = states_of(policy, 0)
    assert InstanceState.SWITCHING in seen
    assert seen[-1] == InstanceState.ACTIVE and cluster.instances[0].role == D
    # Nothing new is prefilled on instance 0 once the switch is decided.
    after = result.arrival_s > 3.0
    assert not np.any(result.prefill_instance[after] == 0)
    assert np.any(result.decode_instance == 0)
    tl = result.timeline
    assert tl.prefill_instances[0] == 2 and tl.prefill_instances[-1] == 1
    assert tl.decode_instances[-1] == 3


def test_removed_instance_stops_and_costs_no_more_gpu_time() -> None:
    config = SimConfig(instances=4)
    policy = Script([P, P, D, D], {2: [RemoveInstance(3)]})
    cluster = build_cluster(WORK, config, policy)
    cluster.run()
    cluster.check()
    result = collect_result(cluster, 0.0)
    assert np.all(result.state == int(RequestState.FINISHED))
    stopped = cluster.instances[3]
    assert stopped.state == InstanceState.STOPPED and stopped.stop_s is not None
    assert not np.any(result.decode_instance[result.arrival_s > 2.5] == 3)
    assert result.gpu_seconds == pytest.approx(3 * result.sim_end_s + stopped.stop_s)


def test_added_instance_cold_starts_within_the_budget() -> None:
    config = SimConfig(instances=4, cold_start_s=3.0)
    policy = Script([P, P, D], {1: [AddInstance(D)]})
    cluster = build_cluster(WORK, config, policy)
    cluster.run()
    cluster.check()
    result = collect_result(cluster, 0.0)
    assert np.all(result.state == int(RequestState.FINISHED))
    seen = states_of(policy, 3)
    # Added at t=1, seen at ticks 2 and 3 while starting, active from t=4 on.
    assert seen[:3] == [InstanceState.STARTING] * 2 + [InstanceState.ACTIVE]
    added = cluster.instances[3]
    assert added.start_s == pytest.approx(1.0)
    assert result.gpu_seconds == pytest.approx(3 * result.sim_end_s + result.sim_end_s - 1.0)
    assert np.any(result.decode_instance == 3)
    with pytest.raises(DopdError, match="already alive"):
        cluster.apply(AddInstance(D))


def test_invalid_actions_are_refused() -> None:
    config = SimConfig(instances=2)
    cluster = build_cluster(WORK, config, Script([P, D], {}))
    with pytest.raises(DopdError, match="no instance 5"):
        cluster.apply(SwitchRole(5, D))
    with pytest.raises(DopdError, match="already has role"):
        cluster.apply(SwitchRole(1, D))
    cluster.apply(SwitchRole(0, D))
    with pytest.raises(DopdError, match="cannot switch"):
        cluster.apply(SwitchRole(0, P))


def test_the_view_reports_instance_signals() -> None:
    config = SimConfig(instances=2)
    policy = Script([P, D], {})
    run_simulation(WORK, config, policy)
    views = policy.views
    assert len(views) >= 10
    busy = [v for v in views if v.instances[1].decode_batch > 0]
    assert busy
    for v in views:
        assert v.count(P) == 1 and v.count(D) == 1 and len(v.alive()) == 2
        for inst in v.instances:
            assert 0 <= inst.kv_used_blocks <= inst.kv_total_blocks and 0 <= inst.kv_use <= 1
    assert max(v.instances[0].recent_step_s for v in views) > 0
    assert views[-1].arrived == len(WORK)


class Observer(ClusterPolicy):
    """Records what the monitoring hooks see."""

    name = "observer"
    router = "pd-pair"

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, int, int, int]] = []
        self.outcomes: list[RequestOutcome] = []

    def initial_roles(self, instances: int) -> list[Role]:
        return [P, D]

    def on_arrival(self, now: float, request_id: int, prompt_tokens: int,
                   output_tokens: int) -> None:
        self.arrivals.append((now, request_id, prompt_tokens, output_tokens))

    def on_request_done(self, now: float, outcome: RequestOutcome) -> None:
        assert outcome.finish_s == now
        self.outcomes.append(outcome)


def test_monitoring_hooks_see_every_arrival_and_completion() -> None:
    policy = Observer()
    result = run_simulation(WORK, SimConfig(instances=2), policy)
    assert [a[1] for a in policy.arrivals] == list(range(len(WORK)))
    assert [a[0] for a in policy.arrivals] == WORK.arrival_s.tolist()
    assert sorted(o.request_id for o in policy.outcomes) == list(range(len(WORK)))
    for o in policy.outcomes:
        assert o.state == RequestState.FINISHED and o.decode_instance == 1
        assert o.ttft_s == result.first_token_s[o.request_id] - result.arrival_s[o.request_id]


def test_a_policy_may_set_its_own_tick() -> None:
    policy = Script([P, D], {})
    policy.tick_s = 0.25
    result = run_simulation(WORK, SimConfig(instances=2, tick_s=1.0), policy)
    times = [v.now for v in policy.views]
    assert times[:3] == [0.25, 0.5, 0.75]
    assert times[-1] <= result.sim_end_s + 0.25


def test_stranded_requests_end_aborted_with_a_reason() -> None:
    config = SimConfig(instances=2)
    policy = Script([P, D], {1: [RemoveInstance(1)]})
    result = run_simulation(WORK, config, policy)
    aborted = np.flatnonzero(result.state == int(RequestState.ABORTED))
    assert aborted.size > 0
    assert all("stranded" in result.reason[int(i)] for i in aborted)
    assert np.all(result.state >= int(RequestState.FINISHED))


def _switch_decode_to_prefill(migrate: bool) -> tuple[Script, object, object]:
    config = SimConfig(instances=4, role_switch_s=1.0)
    policy = Script([P, P, D, D], {5: [SwitchRole(3, P, reason="test", migrate=migrate)]})
    cluster = build_cluster(WORK, config, policy)
    cluster.run()
    cluster.check()
    return policy, cluster, collect_result(cluster, 0.0)


def test_a_migrating_switch_moves_decodes_with_their_kv_and_loses_nothing() -> None:
    stay_policy, _, stay = _switch_decode_to_prefill(migrate=False)
    move_policy, moved_cluster, move = _switch_decode_to_prefill(migrate=True)
    for result in (stay, move):
        assert np.all(result.state == int(RequestState.FINISHED))
    # Decoding on instance 3 across the switch: they finish there, or move to instance 2.
    across = (stay.decode_instance == 3) & (stay.first_token_s < 5.0) & (stay.finish_s > 5.0)
    assert across.sum() >= 3
    assert np.all(move.decode_instance[across] == 2)
    assert np.array_equal(move.first_token_s[across], stay.first_token_s[across])
    assert moved_cluster.life.migrations == across.sum()
    assert move.kv_bytes_moved > stay.kv_bytes_moved
    # The instance is free for its new role sooner.
    def active_again(policy: Script) -> int:
        seen = states_of(policy, 3)
        return next(k for k in range(6, len(seen)) if seen[k] == InstanceState.ACTIVE)
    assert active_again(move_policy) < active_again(stay_policy)
    assert moved_cluster.instances[3].role == P
