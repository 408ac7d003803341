"""Elastic pools on Ray: the controller's additions start actors (their cold start measured
and given to the policy's solver), its removals drain and stop them, within the budget."""

from __future__ import annotations

import asyncio
import time

import pytest

from dopd.engine.model import SamplingParams
from dopd.serve.config import ServeConfig
from dopd.serve.controller import Controller
from dopd.serve.dispatch import Dispatcher
from dopd.serve.engines import EngineSpec
from dopd.serve.metrics import ServeMetrics
from dopd.serve.server import build_policy
from dopd.sim.policy import AddInstance, RemoveInstance
from dopd.types import InstanceState, Role

pytest.importorskip("ray")
pytestmark = pytest.mark.slow


async def settled(decision: dict, timeout: float = 90.0) -> dict:  # type: ignore[type-arg]
    """``decision`` (a controller's record, updated in place) once it is no longer in
    progress."""
    deadline = time.monotonic() + timeout
    while decision["status"] in ("starting", "draining"):
        assert time.monotonic() < deadline, f"decision still in progress: {decision}"
        await asyncio.sleep(0.05)
    return decision


async def one_request(dispatcher: Dispatcher, n: int) -> tuple[int, int | None]:
    """(tokens, prefill instance) of one request through the dispatcher."""
    t = dispatcher.submit([1, 2, 3, 4], SamplingParams(max_tokens=n, temperature=0))
    tokens = 0
    while True:
        ev = await asyncio.wait_for(t.queue.get(), 30)
        assert ev.kind != "error", ev.message
        tokens += len(ev.token_ids)
        if ev.kind == "done":
            return tokens, t.prefill_iid


def test_controller_adds_and_removes_actors(ray_address) -> None:  # type: ignore[no-untyped-def]
    from dopd.serve.ray_cluster import RayCluster

    async def scenario() -> None:
        spec = EngineSpec(model="dopd-tiny", role=Role.DECODE, mode="emulated",
                          step_time_scale=0.0)
        cluster = RayCluster(spec, [Role.DECODE], address=ray_address, cpus_per_instance=0.5,
                             budget=2)
        await cluster.start()
        policy = build_policy(ServeConfig(policy="dopd", instances=2, mode="emulated"))
        dispatcher = Dispatcher(cluster.instances,  # type: ignore[arg-type]
                                lambda iid: cluster.instances[iid].kv_addr)
        controller = Controller(policy, cluster.instances, dispatcher,  # type: ignore[arg-type]
                                ServeMetrics(), scaler=cluster, budget=2)
        cluster.listener = dispatcher.on_event
        cluster.on_crash = dispatcher.on_crash
        try:
            controller.apply(AddInstance(Role.PREFILL, "scale out"))
            adding = controller.decisions[-1]
            controller.apply(AddInstance(Role.PREFILL, "beyond the budget"))
            assert controller.decisions[-1]["status"].startswith("refused: 2 of at most 2")
            added = await settled(adding)
            assert added["status"] == "done" and added["instance"] == 1
            new = cluster.instances[1]
            assert new.state == InstanceState.ACTIVE and new.role == Role.PREFILL
            assert new.cold_start_s is not None and 0 < new.cold_start_s < 90
            assert added["cold_start_s"] == round(new.cold_start_s, 3)
            assert policy.solver_config.cold_start_s == new.cold_start_s
            # the new actor prefills, the first one decodes
            assert await one_request(dispatcher, 5) == (5, 1)
            controller.apply(RemoveInstance(1, "scale in"))
            removed = await settled(controller.decisions[-1])
            assert removed["status"] == "done" and new.state == InstanceState.STOPPED
            assert not cluster.alive(new)
            controller.apply(RemoveInstance(0, "the last one"))
            assert controller.decisions[-1]["status"] == "refused: it is the last one"
            assert await one_request(dispatcher, 3) == (3, None)  # colocated on instance 0
            assert controller.view().budget == 2 and len(controller.view().alive()) == 1
        finally:
            await controller.close()
            await cluster.stop()
        assert not cluster.alive(cluster.instances[0])

    asyncio.run(scenario())


def test_actor_that_cannot_be_placed_is_a_clear_error(ray_address) -> None:  # type: ignore[no-untyped-def]
    from dopd.errors import DopdError
    from dopd.serve.ray_cluster import RayCluster

    async def scenario() -> str:
        spec = EngineSpec(model="dopd-tiny", role=Role.MIXED, mode="emulated")
        cluster = RayCluster(spec, [Role.MIXED], address=ray_address, cpus_per_instance=64,
                             start_timeout_s=1.0)
        try:
            await cluster.start()
        except DopdError as exc:
            return str(exc)
        finally:
            await cluster.stop(1.0)
        return "started"

    message = asyncio.run(scenario())
    assert message.startswith("worker 0 not ready after 1 s; each actor asks for 64 CPU")
