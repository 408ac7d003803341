"""Fast unit tests of the serving pieces: wire codec, request validation, config, emulated
runner, placement."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
import torch

from dopd.engine.kv_handoff import KVHandle
from dopd.engine.model import KVPayload, SamplingParams
from dopd.errors import DopdError
from dopd.serve.dispatch import Dispatcher
from dopd.serve.errors import ServeError
from dopd.serve.messages import (
    Accept,
    Command,
    Handoff,
    Output,
    OutputItem,
    Submit,
    WorkerStats,
)
from dopd.serve.protocol import ChatRequest, CompletionRequest
from dopd.serve.serve_config import ServeConfig, load_serve_config
from dopd.serve.wire import (
    handle_from_wire,
    handle_to_wire,
    pack,
    payload_frames,
    payload_from_frames,
    unpack,
)
from dopd.types import InstanceState, RequestState, Role


def test_handle_and_payload_round_trip() -> None:
    params = SamplingParams(max_tokens=9, temperature=0.5, stop=("x",), stop_token_ids=(3,))
    h = KVHandle(7, "worker-0", (1, 2, 3), 42, 3, (5,), 16, 12.5, params, 99, 9)
    assert handle_from_wire(unpack(pack(handle_to_wire(h)))) == h
    data = torch.randn(4, 2, 3, 4, 32)
    header, body = payload_frames(KVPayload(data))
    assert body.nbytes == data.numel() * 4
    back = payload_from_frames(header, memoryview(bytes(body)))
    assert torch.equal(back.data, data)
    with pytest.raises(DopdError, match="header says"):
        payload_from_frames(header, memoryview(bytes(body)[:-4]))
    with pytest.raises(DopdError, match="malformed"):
        unpack(b"\xc1")


def test_sampling_validation() -> None:
    req = CompletionRequest(model="m", prompt="hi", max_tokens=5, stop="END")
    p = req.sampling(3, 100, 256)
    assert p.max_tokens == 5 and p.stop == ("END",)
    with pytest.raises(ServeError, match="context window"):
        req.sampling(98, 100, 256)
    with pytest.raises(ServeError, match=">= 1"):
        CompletionRequest(model="m", prompt="hi", max_tokens=0).sampling(3, 100, 256)
    with pytest.raises(ServeError, match="n=1"):
        CompletionRequest(model="m", prompt="hi", n=2).sampling(3, 100, 256)
    chat = ChatRequest(model="m", messages=[{"role": "user", "content": "a"}])
    assert chat.sampling(10, 100, 256).max_tokens == 90  # default: the room left
    chat = ChatRequest(model="m", messages=[{"role": "user", "content": "a"}],
                       max_completion_tokens=4, max_tokens=50)
    assert chat.sampling(10, 100, 256).max_tokens == 4


def test_config_file_and_overrides(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "serve.toml"
    path.write_text('[serve]\ninstances = 3\npolicy = "static:1:2"\nport = 9000\n')
    cfg = load_serve_config(path, {"port": 9100, "mode": None})
    assert (cfg.instances, cfg.policy, cfg.port, cfg.mode) == (3, "static:1:2", 9100, "real")
    path.write_text("[serve]\ninstance = 3\n")
    with pytest.raises(DopdError, match="unknown key"):
        load_serve_config(path, {})
    with pytest.raises(DopdError, match="mode"):
        ServeConfig(mode="fast")


def test_emulated_runner_is_deterministic_and_timed() -> None:
    from dopd.serve.engines import EngineSpec, build_engine

    spec = EngineSpec(model="dopd-tiny", role=Role.MIXED, mode="emulated", step_time_scale=0.0)
    a = build_engine(spec).generate(["hello"], SamplingParams(max_tokens=6))[0]
    b = build_engine(spec).generate(["hello"], SamplingParams(max_tokens=6))[0]
    assert a.token_ids == b.token_ids and a.text.isalpha() and len(a.token_ids) == 6
    timed = build_engine(EngineSpec(model="dopd-tiny", role=Role.MIXED, mode="emulated",
                                    step_time_scale=1.0))
    timed.generate(["hello"], SamplingParams(max_tokens=4))
    assert timed.stats.busy_s > 4 * 0.001  # llama-3-8b steps on an A100 take milliseconds


@dataclass
class FakeInstance:
    instance_id: int
    role: Role
    state: InstanceState = InstanceState.ACTIVE
    target_role: Role | None = None
    stats: WorkerStats = field(default_factory=WorkerStats)
    stats_t: float = 0.0
    kv_addr: str = "tcp://x"
    pid: int | None = None
    restarts: int = 0
    sent: list[Command] = field(default_factory=list)

    def send(self, msg: Command) -> bool:
        self.sent.append(msg)
        return True


def kv_handle(rid: int, prompt: int = 3) -> KVHandle:
    return KVHandle(rid, "worker-0", (1,) * prompt, 9, prompt, (0,) * (prompt // 16 + 1), 16,
                    1.0, SamplingParams(max_tokens=4), 0, 4)


def out_event(rid: int, ids: tuple[int, ...], text: str, n_prompt: int, n_out: int,
         finished: bool, reason: str | None, handoff: Handoff | None) -> Output:
    """A worker's ``out`` event of one item (the tests' shorthand)."""
    state = RequestState.FINISHED if finished else (
        RequestState.TRANSFERRING if handoff else RequestState.DECODING)
    item = OutputItem(rid, ids, text, n_prompt, n_out, finished, reason, state, handoff)
    return Output((item,), "tcp://x", WorkerStats())


def test_placement_and_hand_off() -> None:
    async def run() -> None:
        inst = {0: FakeInstance(0, Role.PREFILL), 1: FakeInstance(1, Role.DECODE),
                2: FakeInstance(2, Role.DECODE)}
        d = Dispatcher(inst, lambda i: f"tcp://kv{i}")  # type: ignore[arg-type]
        t = d.submit([1, 2, 3], SamplingParams(max_tokens=4))
        assert t.where == 0 and isinstance(inst[0].sent[-1], Submit)
        handoff = Handoff(kv_handle(t.rid))
        d.on_event(0, out_event(t.rid, (9,), "a", 3, 1, False, None, handoff))
        assert t.where == 1 and inst[1].sent[-1] == Accept(t.rid, handoff, "tcp://kv0")
        inst[2].state = InstanceState.DRAINING
        t2 = d.submit([4], SamplingParams(max_tokens=4))
        d.on_event(0, out_event(t2.rid, (8,), "b", 1, 1, False, None, Handoff(kv_handle(t2.rid))))
        assert t2.where == 1  # the draining decode instance gets nothing new
        d.on_event(1, out_event(t.rid, (5, 6, 7), "cde", 3, 4, True, "length", None))
        events = [t.queue.get_nowait() for _ in range(3)]
        assert [e.kind for e in events] == ["delta", "delta", "done"]
        assert d.holding(1) == 1 and t.rid not in d.tracked
        inst[1].state = InstanceState.STOPPED
        d.on_crash(1)  # t2 produced a token: it resumes, on the prefill instance (no decode up)
        assert t2.where == 0 and t2.rid in d.tracked
        sub = inst[0].sent[-1]
        assert isinstance(sub, Submit)
        assert (sub.rid, sub.ids, sub.local) == (t2.rid, (4, 8), True)
        inst[1].state = InstanceState.ACTIVE  # restarted
        inst[0].state = InstanceState.STOPPED
        t3 = d.submit([1], SamplingParams())  # no prefill left: colocated on a decode instance
        assert t3.phase == "colocated" and t3.where == 1
        for i in (0, 1):
            inst[i].state = InstanceState.STOPPED
        with pytest.raises(ServeError, match="no instance"):
            d.submit([1], SamplingParams())

    asyncio.run(run())
