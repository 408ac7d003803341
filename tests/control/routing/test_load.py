"""The routers' view of an instance, :class:`InstanceLoad`, is one protocol that the simulated
instance (the engine's scheduler state) and the live front end's instance book both provide,
and the decode step formula is one function."""

from __future__ import annotations

import typing
from dataclasses import dataclass

import pytest

from dopd.control.routing.load import InstanceLoad, QueueLoad
from dopd.control.routing.predict import batch_step_s, decode_step_s
from dopd.engine.block_manager import BlockManager
from dopd.engine.scheduler import Scheduler
from dopd.engine.sequence import SchedulerConfig
from dopd.perf.base import LatencyModel
from dopd.perf.factory import build_latency_model
from dopd.sim.instance import SimInstance
from dopd.types import InstanceState, Role


def _members(protocol: type) -> set[str]:
    return {n for n in vars(protocol) if not n.startswith("_")}


def test_the_scheduler_and_the_sim_instance_provide_every_value_routers_read() -> None:
    sched = Scheduler(SchedulerConfig(), BlockManager(100, 16), Role.MIXED)
    for name in _members(QueueLoad):
        assert hasattr(sched, name), name
    inst = SimInstance(0, Role.MIXED, InstanceState.ACTIVE, 0.0, SchedulerConfig(), 100, 16)
    for name in _members(InstanceLoad):
        assert hasattr(inst, name), name
    assert "prefill_work_ahead" in _members(QueueLoad) and "free_at" in _members(InstanceLoad)
    assert typing.get_type_hints(InstanceLoad.sched.fget)["return"] is QueueLoad  # type: ignore[union-attr]


@dataclass
class _Sched:
    num_decoding: int
    num_reserved: int
    decode_kv_sum: int


@dataclass
class _Inst:
    sched: _Sched
    pending: tuple[int, ...]
    pending_tokens: int


@pytest.mark.parametrize("b,reserved,pending", [(0, 0, 0), (4, 1, 2), (31, 0, 5)])
def test_decode_step_is_the_latency_models_decode_step_of_the_joined_batch(
        b: int, reserved: int, pending: int) -> None:
    latency: LatencyModel = build_latency_model("llama-3-8b", "a100-80gb")
    inst = _Inst(_Sched(b, reserved, 4000 * b), (0,) * pending, 300 * pending)
    batch = b + reserved + pending + 1
    expected = latency.step_time(0, 0, 0, batch, 4000 * b + 300 * pending + 200)
    assert decode_step_s(latency, inst, 200) == pytest.approx(expected, rel=1e-9)  # type: ignore[arg-type]
    now = batch_step_s(latency, inst)  # type: ignore[arg-type]
    assert now == (0.0 if b == 0 else pytest.approx(latency.step_time(0, 0, 0, b, 4000 * b)))
