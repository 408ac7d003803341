"""The shared request flow (:mod:`dopd.control.flow`) in both drivers: each difference the two
copies had (issue 12) is checked in the simulator and on live emulated workers (the front
end's dispatcher and controller in this process, worker processes behind them)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from dopd.control.policies.base import Action, ClusterPolicy, ClusterView, SwitchRole
from dopd.engine.model import SamplingParams
from dopd.serve.cluster import LocalCluster
from dopd.serve.controller import Controller
from dopd.serve.dispatch import Dispatcher
from dopd.serve.engines import EngineSpec
from dopd.serve.in_flight import Observer, Tracked
from dopd.serve.messages import Event as WorkerEvent
from dopd.serve.messages import KVNotice
from dopd.serve.metrics import ServeMetrics
from dopd.sim.api import SimConfig
from dopd.sim.cluster import SimCluster
from dopd.sim.simulation import build_cluster, collect_result
from dopd.types import InstanceState, RequestOutcome, RequestState, Role
from dopd.workload import Workload

pytestmark = pytest.mark.slow

P, D, M = Role.PREFILL, Role.DECODE, Role.MIXED
ACTIVE = InstanceState.ACTIVE

# Slow emulated steps (a 200-token prompt takes about half a second, a decode step about a
# tenth) with one prompt a step, so prompts queue on an instance and decodes last seconds.
SPEC = EngineSpec(model="dopd-tiny", role=M, mode="emulated", step_time_scale=20.0,
                  max_batched_tokens=256)


# ---------------------------------------------------------------------------- simulator side
class Script(ClusterPolicy):
    """Starts with ``roles``, takes ``actions[k]`` at tick ``k`` and keeps every view."""

    name = "script"
    router = "least-loaded"
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


def burst(n: int, prompt: int, output: int, every_s: float = 0.01) -> Workload:
    arrival = np.arange(n, dtype=np.float64) * every_s
    return Workload.from_arrays("burst", arrival, np.full(n, prompt), np.full(n, output))


def simulate(roles: list[Role], actions: dict[int, list[Action]], work: Workload
             ) -> tuple[SimCluster, Script]:
    policy = Script(roles, actions)
    cluster = build_cluster(work, SimConfig(instances=len(roles), role_switch_s=0.5), policy)
    return cluster, policy


# ---------------------------------------------------------------------------- live side
@dataclass
class Live:
    cluster: LocalCluster
    dispatcher: Dispatcher
    controller: Controller
    outcomes: dict[int, RequestOutcome] = field(default_factory=dict)

    def submit(self, prompt: int, tokens: int) -> Tracked:
        ids = [1 + i % 200 for i in range(prompt)]
        return self.dispatcher.submit(ids, SamplingParams(max_tokens=tokens, temperature=0))

    def hold(self, iid: int, held: bool) -> None:
        """Keep instance ``iid`` out of placement (as if starting) or put it back."""
        self.cluster.instances[iid].state = InstanceState.STARTING if held else ACTIVE


class Collect(Observer):
    def __init__(self, into: dict[int, RequestOutcome]) -> None:
        self.into = into

    def on_done(self, t: Tracked, outcome: RequestOutcome) -> None:
        self.into[t.rid] = outcome


@asynccontextmanager
async def live(roles: list[Role], spec: EngineSpec = SPEC) -> AsyncIterator[Live]:
    cluster = LocalCluster(spec, roles)
    await cluster.start()
    dispatcher = Dispatcher(cluster.instances,  # type: ignore[arg-type]
                            lambda iid: cluster.instances[iid].kv_addr)
    controller = Controller(ClusterPolicy(), cluster.instances,  # type: ignore[arg-type]
                            dispatcher, ServeMetrics(), budget=len(roles), drain_timeout_s=60)
    cluster.listener = dispatcher.on_event
    cluster.on_crash = dispatcher.on_crash
    run = Live(cluster, dispatcher, controller)
    dispatcher.observers.append(Collect(run.outcomes))
    try:
        yield run
    finally:
        await controller.close()
        await cluster.stop()


async def finish(t: Tracked, timeout: float = 60.0) -> int:
    """Tokens streamed by ``t`` until it is done (an error fails the test)."""
    tokens = 0
    while True:
        ev = await asyncio.wait_for(t.queue.get(), timeout)
        assert ev.kind != "error", ev.message
        tokens += len(ev.token_ids)
        if ev.kind == "done":
            return tokens


async def settled(decision: dict[str, object], timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while decision["status"] in ("draining", "switching", "starting"):
        assert time.monotonic() < deadline, f"still in progress: {decision}"
        await asyncio.sleep(0.05)
    return str(decision["status"])


async def first_token(t: Tracked, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while t.first_token_t is None:
        assert time.monotonic() < deadline, "no first token"
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------- (a) drains
def test_sim_drain_places_unstarted_prompts_elsewhere() -> None:
    cluster, _ = simulate([M, M], {1: [SwitchRole(0, D)]}, burst(60, 6000, 20, 0.02))
    moved: list[int] = []
    original = cluster.reroute_prompt

    def spy(rid: int) -> None:
        moved.append(rid)
        original(rid)

    cluster.reroute_prompt = spy  # type: ignore[method-assign]
    cluster.run()
    cluster.check()
    result = collect_result(cluster, 0.0)
    assert np.all(result.state == int(RequestState.FINISHED))
    assert moved and all(result.prefill_instance[r] == 1 for r in moved)
    assert cluster.instances[0].role == D


def test_live_drain_places_unstarted_prompts_elsewhere() -> None:
    async def scenario() -> None:
        async with live([M, M]) as run:
            run.hold(1, True)
            ts = [run.submit(200, 3) for _ in range(6)]
            run.hold(1, False)
            decision = run.controller.switch(0, D)
            assert run.dispatcher.moved >= 1  # the queued prompts left at once
            assert [await finish(t) for t in ts] == [3] * 6
            assert await settled(decision) == "done"
            served = [run.outcomes[t.rid].decode_instance for t in ts]
            assert served.count(1) == run.dispatcher.moved
            h = run.cluster.instances[0]
            assert (h.role, h.state) == (D, ACTIVE)

    asyncio.run(scenario())


# ---------------------------------------------------------------------------- (b) switches
def test_sim_in_place_and_migrating_switches() -> None:
    work = burst(40, 500, 200, 0.05)
    cluster, policy = simulate([M, M], {1: [SwitchRole(0, D, in_place=True)]}, work)
    cluster.run()
    cluster.check()
    states = [v.instances[0].state for v in policy.views]
    assert InstanceState.DRAINING not in states and policy.views[-1].instances[0].role == D
    cluster, _ = simulate([M, M], {1: [SwitchRole(0, P, migrate=True)]}, work)
    cluster.run()
    cluster.check()
    assert cluster.life.migrations > 0 and cluster.instances[0].role == P


def test_live_in_place_switch_keeps_its_decodes() -> None:
    async def scenario() -> None:
        async with live([M, M]) as run:
            run.hold(1, True)
            t = run.submit(20, 40)
            run.hold(1, False)
            await first_token(t)
            run.controller.apply(SwitchRole(0, D, in_place=True))
            h = run.cluster.instances[0]
            assert (h.role, h.state) == (D, ACTIVE)  # at once, no drain
            decision = run.controller.decisions[-1]
            assert await finish(t) == 40
            assert await settled(decision) == "done"
            assert run.outcomes[t.rid].decode_instance == 0 and run.dispatcher.moved == 0

    asyncio.run(scenario())


def test_live_migrating_switch_moves_its_decodes() -> None:
    async def scenario() -> None:
        async with live([M, M]) as run:
            run.hold(1, True)
            t = run.submit(20, 40)
            run.hold(1, False)
            await first_token(t)
            run.controller.apply(SwitchRole(0, P, migrate=True))
            assert run.dispatcher.moved == 1
            decision = run.controller.decisions[-1]
            assert await finish(t) == 40  # every token once, resumed on instance 1
            assert run.outcomes[t.rid].decode_instance == 1
            assert await settled(decision) == "done"
            assert run.cluster.instances[0].role == P

    asyncio.run(scenario())


# ---------------------------------------------------------------------------- (c) hand-off order
def test_sim_handoff_reserves_decode_memory_before_its_transfer() -> None:
    # About 26k tokens of KV per instance: three prefill instances feed one decode instance
    # that holds about seven of these requests, so hand-offs wait for its memory.
    work = burst(40, 3000, 300, 0.001)
    cluster = build_cluster(work, SimConfig(instances=4, kv_mem_util=0.25), "static:3:1")
    decoder = cluster.instances[3]
    reserved_at: dict[int, float] = {}
    refused = [0]
    reserve = decoder.sched.reserve_remote

    def spy_reserve(rid: int, *args: int) -> bool:
        ok = reserve(rid, *args)
        if ok:
            reserved_at[rid] = cluster.q.now
        else:
            refused[0] += 1
        return ok

    class Network:  # the cluster's link, checking each transfer as it starts
        def __init__(self, net: Any) -> None:
            self.net = net

        def __getattr__(self, name: str) -> Any:
            return getattr(self.net, name)

        def start(self, now: float, source: int, rid: int, nbytes: float) -> Any:
            assert rid in reserved_at and reserved_at[rid] <= now  # memory first, then bytes
            return self.net.start(now, source, rid, nbytes)

    decoder.sched.reserve_remote = spy_reserve  # type: ignore[method-assign]
    cluster.network = Network(cluster.network)  # type: ignore[assignment]
    cluster.run()
    cluster.check()
    assert len(reserved_at) == 40 and refused[0] > 0  # some hand-offs waited for memory


def test_live_handoff_reserves_decode_memory_before_its_transfer() -> None:
    """A decode instance with room for one request's KV: the second hand-off's KV is fetched
    only once the first request finished and freed its blocks (before, it was fetched at once
    and kept aside until memory was free)."""

    async def scenario() -> None:
        spec = dataclasses.replace(SPEC, role=P, kv_cache_mb=4.0, kv_timeout_s=2.0,
                                   kv_lease_s=120.0)
        async with live([P, D], spec) as run:
            kv_at: dict[int, float] = {}
            on_event = run.dispatcher.on_event

            def spy(iid: int, ev: WorkerEvent) -> None:
                if isinstance(ev, KVNotice):
                    kv_at[ev.rid] = time.monotonic()
                on_event(iid, ev)

            run.cluster.listener = spy
            blocks = int(run.cluster.instances[1].stats.kv_total_blocks)
            tokens = blocks * 16 * 6 // 10  # one request's prompt fits, two do not
            first = run.submit(tokens, 20)
            await first_token(first)
            second = run.submit(tokens, 4)
            assert await finish(first) == 20
            done_first = time.monotonic()
            assert await finish(second) == 4
            assert first.rid in kv_at and kv_at[second.rid] >= done_first
            assert not second.recomputed and not first.recomputed

    asyncio.run(scenario())


# ---------------------------------------------------------------------------- (d) decode-only
def test_sim_decode_only_cluster_serves_colocated() -> None:
    cluster, _ = simulate([D, D], {}, burst(20, 300, 10, 0.1))
    cluster.run()
    cluster.check()
    result = collect_result(cluster, 0.0)
    assert np.all(result.state == int(RequestState.FINISHED))
    assert np.array_equal(result.prefill_instance, result.decode_instance)


def test_live_decode_only_cluster_serves_colocated() -> None:
    async def scenario() -> None:
        async with live([D]) as run:
            t = run.submit(30, 4)
            assert await finish(t) == 4
            outcome = run.outcomes[t.rid]
            assert outcome.state == RequestState.FINISHED and outcome.decode_instance == 0

    asyncio.run(scenario())


# ---------------------------------------------------------------------------- (e) the view
def test_both_drivers_show_an_idle_cluster_alike() -> None:
    def key(view: ClusterView) -> list[tuple[object, ...]]:
        return [(v.instance_id, v.role, v.state, v.target_role, v.queued_prefill_tokens,
                 v.waiting, v.prefilling, v.decode_batch, v.pending_decodes, v.kv_used_blocks)
                for v in view.instances]

    cluster, _ = simulate([P, D], {}, burst(1, 10, 2))
    sim_view = cluster.view()

    async def scenario() -> ClusterView:
        async with live([P, D]) as run:
            return run.controller.view()

    live_view = asyncio.run(scenario())
    assert key(sim_view) == key(live_view)
    assert sim_view.budget == live_view.budget == 2
