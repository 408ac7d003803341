"""Unit checks of the reliability pieces: restart backoff, admission limits, Retry-After, and
the dispatcher's handling of lost workers (suspects, probation, poison, resume, fallback)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from test_units import kv_handle, out_event

from dopd.engine.model import SamplingParams
from dopd.serve.admission import AdmissionLimits, FinishRate, clamp_retry_after
from dopd.serve.dispatch import SUSPECT_WAIT_S, Dispatcher
from dopd.serve.errors import ServeError
from dopd.serve.faults import FaultPolicy, RestartBackoff
from dopd.serve.in_flight import Event
from dopd.serve.messages import Command, Handoff, WorkerStats, encode
from dopd.types import InstanceState, Role


def test_restart_backoff_doubles_within_the_window_and_resets_after_it() -> None:
    now = [0.0]
    b = RestartBackoff(FaultPolicy(restart_window_s=10, restart_backoff_s=0.5,
                                   restart_backoff_max_s=3), clock=lambda: now[0])
    delays = []
    for _ in range(6):
        delays.append(b.record())
        now[0] += 1
    assert delays == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]
    now[0] += 11  # a quiet window: back to an immediate restart
    assert b.record() == 0.0


def test_admission_limits() -> None:
    lim = AdmissionLimits(instance_requests=2, instance_tokens=100, instances=3)
    assert lim.max_requests == 6 and lim.max_tokens == 300
    assert lim.instance_room(0, 0, 10_000)  # an empty instance takes any request
    assert lim.instance_room(1, 50, 50) and not lim.instance_room(1, 50, 51)
    assert not lim.instance_room(2, 0, 1)
    assert not lim.cluster_room(6, 0, 1) and lim.cluster_room(5, 0, 1)
    assert AdmissionLimits(cluster_requests=7).max_requests == 7


def test_retry_after() -> None:
    assert clamp_retry_after(0.01) == 1 and clamp_retry_after(1e9) == 60
    assert clamp_retry_after(float("nan")) == 60 and clamp_retry_after(2.2) == 3
    rate = FinishRate()
    assert rate.retry_after(3) == 5  # nothing finished: the idle default
    for i in range(11):
        rate.finished(100.0 + i * 0.5)  # 2 per second
    assert rate.rate(105.0) == pytest.approx(11 / 5)
    assert 1 <= rate.retry_after(10) <= 60


@dataclass
class FakeInstance:
    """An instance handle that records what the dispatcher sends it."""

    instance_id: int
    role: Role
    state: InstanceState = InstanceState.ACTIVE
    target_role: Role | None = None
    stats: WorkerStats = field(default_factory=WorkerStats)
    stats_t: float = 0.0
    kv_addr: str = ""
    pid: int | None = None
    restarts: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)

    def send(self, msg: Command) -> bool:
        if self.state in (InstanceState.STARTING, InstanceState.STOPPED):
            return False
        self.sent.append(encode(msg))  # as it goes on the wire
        return True


def _dispatcher(*roles: Role) -> tuple[Dispatcher, dict[int, FakeInstance]]:
    insts = {i: FakeInstance(i, r) for i, r in enumerate(roles)}
    return Dispatcher(insts, lambda iid: f"kv{iid}"), insts  # type: ignore[arg-type]


def _events(t: Any) -> list[Event]:
    out = []
    while not t.queue.empty():
        out.append(t.queue.get_nowait())
    return out


def _submits(inst: FakeInstance) -> list[dict[str, Any]]:
    return [m for m in inst.sent if m["k"] == "submit"]


def _lose(d: Dispatcher, insts: dict[int, FakeInstance], iid: int) -> None:
    insts[iid].state = InstanceState.STOPPED
    d.on_crash(iid)


def test_suspects_go_one_at_a_time_and_a_request_in_two_losses_fails_alone() -> None:
    d, insts = _dispatcher(Role.MIXED, Role.MIXED)
    params = SamplingParams(max_tokens=8)
    reqs = [d.submit([5, 6, 7], params) for _ in range(4)]
    on0 = [t for t in reqs if t.where == 0]
    assert on0
    d.on_event(0, out_event(on0[0].rid, (11,), "a", 3, 1, False, None, None))
    _lose(d, insts, 0)
    # one suspect placed (on probation), the others wait
    assert d.probation is not None and d.probation.where == 1
    assert len(d.suspects) == len(on0) - 1
    first = d.probation
    if first is on0[0]:  # it streamed a token: it resumes with prompt + that token
        assert _submits(insts[1])[-1]["ids"] == [5, 6, 7, 11]
    d.on_event(1, out_event(first.rid, (12,), "b", 3, 1, False, None, None))
    assert d.probation is not first  # a token on its new instance: cleared, next one placed
    # the instance now serving the next suspect fails too: that suspect is poison, alone
    victim = d.probation
    others = [t for t in reqs if t.where == 1 and t is not victim]
    _lose(d, insts, 1)
    assert victim is not None and victim.rid not in d.tracked
    ev = _events(victim)[-1]
    assert ev.kind == "error" and ev.status == 500
    assert all(t.rid in d.tracked for t in others)  # first loss for them: suspects
    assert d.poisoned == 1
    # an identical request fails at once
    with pytest.raises(ServeError) as exc:
        d.submit([5, 6, 7], params)
    assert exc.value.status in (500, 503)


def test_resumed_request_counts_tokens_across_instances() -> None:
    d, insts = _dispatcher(Role.MIXED, Role.MIXED)
    t = d.submit([1, 2, 3], SamplingParams(max_tokens=4))
    src = t.where
    assert src is not None
    d.on_event(src, out_event(t.rid, (9, 9), "xy", 3, 2, False, None, None))
    _lose(d, insts, src)
    dst = t.where
    assert dst is not None and dst != src
    sub = _submits(insts[dst])[-1]
    assert sub["ids"] == [1, 2, 3, 9, 9] and sub["params"]["max_tokens"] == 2
    d.on_event(dst, out_event(t.rid, (8, 8), "zz", 5, 2, True, "length", None))
    evs = _events(t)
    assert evs[-1].kind == "done" and t.n_out == 4


def test_prefill_instances_serve_whole_requests_while_no_decode_is_up() -> None:
    d, insts = _dispatcher(Role.PREFILL, Role.DECODE)
    t = d.submit([1, 2, 3], SamplingParams(max_tokens=4))
    assert t.where == 0 and t.phase == "prefill"
    insts[1].state = InstanceState.STOPPED
    t2 = d.submit([1, 2], SamplingParams(max_tokens=4))
    assert _submits(insts[0])[-1].get("local") is True and t2.where == 0
    # the prompt of t is done but there is no decode instance: it goes on locally
    d.on_event(0, out_event(t.rid, (7,), "q", 3, 1, False, None, Handoff(kv_handle(t.rid))))
    assert t.rid in d.tracked and t.where == 0
    last = _submits(insts[0])[-1]
    assert last["ids"] == [1, 2, 3, 7] and last.get("local") is True


def test_queue_limits_answer_429_with_retry_after() -> None:
    d, _insts = _dispatcher(Role.MIXED, Role.MIXED)
    d.limits = AdmissionLimits(instance_requests=2, instance_tokens=1000, instances=2)
    for _ in range(4):
        d.submit([1, 2, 3], SamplingParams(max_tokens=4))
    with pytest.raises(ServeError) as exc:
        d.submit([1, 2, 3], SamplingParams(max_tokens=4))
    assert exc.value.status == 429 and exc.value.retry_after is not None
    assert (b"retry-after", str(exc.value.retry_after).encode()) in exc.value.headers()
    assert d.overloaded == 1
    d2, _ = _dispatcher(Role.MIXED)
    d2.limits = AdmissionLimits(instance_requests=10, instance_tokens=5, instances=1)
    d2.submit([1, 2, 3], SamplingParams(max_tokens=4))
    with pytest.raises(ServeError) as exc:  # the tokens limit
        d2.submit([1, 2, 3], SamplingParams(max_tokens=4))
    assert exc.value.status == 429


def test_admission_control_429_carries_retry_after_from_the_predicted_wait() -> None:
    from dopd.control.routing.router import Placement

    d, _ = _dispatcher(Role.PREFILL, Role.DECODE)

    def reject(*args: Any, **kw: Any) -> Placement:
        return Placement(None, reject="admission control: predicted TTFT 3.20 s > 1 s",
                         predicted_ttft_s=3.2)

    d.router.place = reject  # type: ignore[method-assign]
    with pytest.raises(ServeError) as exc:
        d.submit([1, 2, 3], SamplingParams(max_tokens=4))
    assert exc.value.status == 429 and exc.value.code == "admission_control"
    assert exc.value.retry_after == 4


def test_a_suspect_nothing_takes_in_time_fails_with_503_and_retry_after() -> None:
    d, insts = _dispatcher(Role.MIXED)
    t = d.submit([5, 6, 7], SamplingParams(max_tokens=8))
    _lose(d, insts, 0)  # its only instance: it waits as a suspect
    assert t.rid in d.tracked and d.suspects
    d.pump()
    assert t.rid in d.tracked  # still inside the wait bound
    t.suspect_since -= SUSPECT_WAIT_S + 1
    d.pump()
    ev = _events(t)[-1]
    assert t.rid not in d.tracked
    assert ev.kind == "error" and ev.status == 503 and ev.retry_after is not None
    assert ev.retry_after >= 1
