"""Elastic pools on Ray: the controller's additions start actors (their cold start measured
and given to the policy's solver), its removals drain and stop them, within the budget (the
local backend's check, ``tests/serve/test_local_elastic.py``); an actor Ray cannot place is a
clear error."""

from __future__ import annotations

import asyncio

import pytest
from local_checks import local_elastic

from dopd.serve.engines import EngineSpec
from dopd.types import Role

pytest.importorskip("ray")
pytestmark = pytest.mark.slow


def test_controller_adds_and_removes_actors(ray_address) -> None:  # type: ignore[no-untyped-def]
    from dopd.serve.ray_cluster import RayCluster

    async def scenario() -> None:
        cluster = RayCluster(local_elastic.SPEC, [Role.DECODE], address=ray_address,
                             cpus_per_instance=0.5, budget=2)
        await cluster.start()
        await local_elastic.check_elastic(cluster)

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
