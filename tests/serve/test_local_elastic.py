"""Elastic pools on the local backend: the controller's additions start worker processes
(their cold start measured and given to the policy's solver), its removals drain and stop them,
within the budget. :func:`check_elastic` is shared with the Ray backend's test."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from dopd.control.policies.base import AddInstance, RemoveInstance
from dopd.engine.model import SamplingParams
from dopd.serve.cluster import LocalCluster, WorkerCluster
from dopd.serve.controller import Controller
from dopd.serve.dispatch import Dispatcher
from dopd.serve.engines import EngineSpec
from dopd.serve.metrics import ServeMetrics
from dopd.serve.runtime import build_policy
from dopd.serve.serve_config import ServeConfig
from dopd.types import InstanceState, Role

SPEC = EngineSpec(model="dopd-tiny", role=Role.DECODE, mode="emulated", step_time_scale=0.0)


async def settled(decision: dict[str, Any], timeout: float = 90.0) -> dict[str, Any]:
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


async def check_elastic(cluster: WorkerCluster) -> None:
    """On a started one-instance (DECODE) ``cluster`` with a budget of 2: an addition starts a
    PREFILL instance (cold start fed to the solver), one beyond the budget is refused, requests
    are then disaggregated; a removal drains and stops it, the last instance is never removed,
    and requests are served colocated again. Stops the cluster."""
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
        status = controller.decisions[-1]["status"]
        assert status.startswith("refused:") and "2 of at most 2" in status
        added = await settled(adding)
        assert added["status"] == "done" and added["instance"] == 1
        new = cluster.instances[1]
        assert new.state == InstanceState.ACTIVE and new.role == Role.PREFILL
        assert new.cold_start_s is not None and 0 < new.cold_start_s < 90
        assert added["cold_start_s"] == round(new.cold_start_s, 3)
        assert policy.solver_config.cold_start_s == new.cold_start_s
        # the new instance prefills, the first one decodes
        assert await one_request(dispatcher, 5) == (5, 1)
        controller.apply(RemoveInstance(1, "scale in"))
        removed = await settled(controller.decisions[-1])
        assert removed["status"] == "done" and new.state == InstanceState.STOPPED
        assert not cluster.alive(new)
        controller.apply(RemoveInstance(0, "the last one"))
        assert controller.decisions[-1]["status"].endswith("it is the last active one")
        assert await one_request(dispatcher, 3) == (3, None)  # colocated on instance 0
        assert controller.view().budget == 2 and len(controller.view().alive()) == 1
    finally:
        await controller.close()
        await cluster.stop()
    assert not cluster.alive(cluster.instances[0])


def test_local_pool_adds_and_removes_workers() -> None:
    async def scenario() -> None:
        cluster = LocalCluster(SPEC, [Role.DECODE])
        await cluster.start()
        await check_elastic(cluster)

    asyncio.run(scenario())
