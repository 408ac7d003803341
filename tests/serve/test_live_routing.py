"""The simulator's routers placing live requests: the front end's instance books, placement by
predicted work, admission control (429), KV-aware decode placement, learned output lengths, and
the router's queue order reaching the workers' schedulers."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from test_units import FakeInstance, kv_handle, out_event

from dopd.engine.model import SamplingParams
from dopd.serve.dispatch import Dispatcher
from dopd.serve.engines import EngineSpec, build_engine
from dopd.serve.errors import ServeError
from dopd.serve.in_flight import Observer, Tracked
from dopd.serve.live_routing import InstanceBook, live_router
from dopd.serve.messages import Handoff, KVNotice, WorkerStats, encode
from dopd.serve.serve_config import ServeConfig
from dopd.types import InstanceState, RequestOutcome, RequestState, Role


def test_book_keeps_the_schedulers_running_sums() -> None:
    handle = FakeInstance(0, Role.MIXED,
                          stats=WorkerStats(kv_total_blocks=100, recent_step_s=0.02))
    book = InstanceBook(handle, block_size=16)
    book.refresh()
    assert book.blocks.free_blocks == 100 and not book.busy and book.free_at(5.0) == 5.0
    book.queue(1, 40, 10, now=0.0)
    book.queue(2, 100, 5, now=0.0)
    assert (book.queued_prefill_tokens, book.queued_prefill_attn, book.num_waiting) == (
        140, 40 * 40 + 100 * 100, 2)
    assert book.final_kv_sum == 49 + 104 and book.free_at(5.0) == pytest.approx(5.01)
    book.decoding(1, 41)  # first token
    assert book.num_waiting == 1 and book.num_decoding == 1 and book.decode_kv_sum == 41
    assert book.blocks.used_blocks == 3
    book.decoding(1, 49)  # later tokens grow the context (and cross a block)
    assert book.decode_kv_sum == 49 and book.blocks.used_blocks == 4
    book.held(2)  # prefilled for a hand-off: KV kept, no longer queued or planned here
    assert book.queued_prefill_tokens == 0 and book.final_kv_sum == 49
    assert book.blocks.used_blocks == 4 + 7 and book.num_requests == 2
    book.drop(2)  # it moved on: the held KV stays until released
    assert book.blocks.used_blocks == 11
    book.release(2)
    assert book.blocks.used_blocks == 4
    book.expect(3, 64, 8)
    assert len(book.pending) == 1 and book.pending_tokens == 64
    book.decoding(3, 65)  # its KV arrived
    assert book.pending_tokens == 0 and book.num_decoding == 2
    book.clear()
    assert book.snapshot() == {"waiting": 0, "queued_prefill_tokens": 0, "decoding": 0,
                               "decode_ctx_sum": 0, "held": 0, "pending": 0, "used_blocks": 0}
    assert book.final_kv_sum == 0 and book.pending_tokens == 0


def test_book_work_ahead_follows_the_queue_order() -> None:
    fcfs = InstanceBook(FakeInstance(0, Role.MIXED), 16)
    short = InstanceBook(FakeInstance(1, Role.MIXED), 16, "short-first", aging_s=1.0)
    for book in (fcfs, short):
        book.queue(1, 500, 4, now=0.0)
        book.queue(2, 20, 4, now=0.9)
        book.queue(3, 300, 4, now=0.9)
        book.set_now(0.95)
    assert fcfs.prefill_work_ahead(50) == (820, 500**2 + 20**2 + 300**2, 3)
    # short-first: the 20-token prompt, and none aged yet
    assert short.prefill_work_ahead(50) == (20, 400, 1)
    short.set_now(1.5)  # the 500-token prompt has waited past the aging bound
    assert short.prefill_work_ahead(50) == (520, 500**2 + 400, 2)


class Outcomes(Observer):
    def __init__(self) -> None:
        self.arrived: list[int] = []
        self.done: list[RequestOutcome] = []

    def on_arrival(self, t: Tracked) -> None:
        self.arrived.append(t.rid)

    def on_done(self, t: Tracked, outcome: RequestOutcome) -> None:
        self.done.append(outcome)


def dispatcher(roles: list[Role], router: str, blocks: int = 10_000,
               **config: Any) -> tuple[Dispatcher, dict[int, FakeInstance], Outcomes]:
    inst = {i: FakeInstance(i, r, stats=WorkerStats(kv_total_blocks=blocks))
            for i, r in enumerate(roles)}
    serve = ServeConfig(mode="emulated", router=router, **config)
    d = Dispatcher(inst, lambda i: f"tcp://kv{i}",  # type: ignore[arg-type]
                   live_router(serve, kv_blocks=blocks))
    seen = Outcomes()
    d.observers = [seen]
    return d, inst, seen


def in_loop(test: Callable[[], None]) -> None:
    async def run() -> None:
        test()

    asyncio.run(run())


def out(d: Dispatcher, iid: int, t: Tracked, n_out: int, *, finished: bool = False,
        handoff: bool = False) -> None:
    d.on_event(iid, out_event(t.rid, (7,), "x", len(t.prompt_ids), n_out, finished,
                              "length" if finished else None,
                              Handoff(kv_handle(t.rid, len(t.prompt_ids))) if handoff else None))


def test_prompts_go_where_the_predicted_work_is_least() -> None:
    def check() -> None:
        d, _, _ = dispatcher([Role.MIXED, Role.MIXED], "least-loaded")
        big = d.submit(list(range(3000)), SamplingParams(max_tokens=8))
        small = [d.submit([1] * 20, SamplingParams(max_tokens=8)) for _ in range(3)]
        # fewest requests would alternate; the queued prompt tokens say otherwise
        assert big.where == 0 and [t.where for t in small] == [1, 1, 1]
        assert d.book(1).queued_prefill_tokens == 60
        out(d, 0, big, 1)
        assert d.book(0).queued_prefill_tokens == 0 and d.book(0).decode_kv_sum == 3001
        out(d, 0, big, 8, finished=True)
        assert d.book(0).snapshot()["decoding"] == 0 and d.book(0).final_kv_sum == 0

    in_loop(check)


def test_admission_control_rejects_with_429_and_observers_see_it() -> None:
    def check() -> None:
        d, inst, seen = dispatcher([Role.MIXED, Role.MIXED], "length-aware", slo_ttft_s=0.02)
        ok = d.submit([1] * 10, SamplingParams(max_tokens=4))  # ~9 ms predicted: admitted
        with pytest.raises(ServeError) as err:  # ~56 ms predicted > 20 ms
            d.submit([1] * 1000, SamplingParams(max_tokens=4))
        assert err.value.status == 429 and err.value.code == "admission_control"
        assert "admission control: predicted TTFT" in err.value.message
        assert d.rejected == 1 and list(d.tracked) == [ok.rid]
        assert [encode(m)["k"] for i in inst.values() for m in i.sent] == ["submit"]
        assert len(seen.arrived) == 2
        assert [o.state for o in seen.done] == [RequestState.REJECTED]

    in_loop(check)


def test_hand_off_goes_where_the_whole_life_of_the_kv_fits() -> None:
    def check() -> None:
        d, inst, _ = dispatcher([Role.PREFILL, Role.DECODE, Role.DECODE],
                                "length-aware:bypass=off", blocks=200)
        first = d.submit([1] * 1500, SamplingParams(max_tokens=16))
        assert first.where == 0 and first.phase == "prefill"
        out(d, 0, first, 1, handoff=True)
        assert first.where == 1 and d.book(1).pending_tokens == 1500
        assert d.book(0).snapshot()["held"] == 1
        d.on_event(1, KVNotice(first.rid, True, 1000))
        assert d.book(0).snapshot()["held"] == 0 and d.book(1).num_decoding == 1
        second = d.submit([1] * 1500, SamplingParams(max_tokens=16))
        out(d, 0, second, 1, handoff=True)
        # instance 1's 200 blocks cannot hold both prompts and their expected outputs
        assert second.where == 2
        assert encode(inst[2].sent[-1])["k"] == "accept"

    in_loop(check)


def test_the_router_learns_output_lengths_from_finished_requests() -> None:
    def check() -> None:
        d, _, _ = dispatcher([Role.MIXED], "length-aware")
        assert d.router.expected_output_tokens == 256  # type: ignore[attr-defined]
        t = d.submit([1] * 10, SamplingParams(max_tokens=40))
        out(d, 0, t, 1)
        out(d, 0, t, 40, finished=True)
        assert d.router.expected_output_tokens == 40  # type: ignore[attr-defined]

    in_loop(check)


def test_short_prompts_bypass_a_busy_prefill_instance() -> None:
    def check() -> None:
        d, inst, _ = dispatcher([Role.PREFILL, Role.DECODE], "length-aware")
        for _ in range(4):  # about 0.5 s of queued prefill work
            d.submit([1] * 2000, SamplingParams(max_tokens=8))
        short = d.submit([1] * 30, SamplingParams(max_tokens=8))
        assert short.where == 1 and short.phase == "colocated" and short.prefill_iid is None
        assert encode(inst[1].sent[-1])["k"] == "submit"
        inst[1].state = InstanceState.DRAINING  # nothing can decode: the prefill serves whole
        alone = d.submit([1] * 30, SamplingParams(max_tokens=8))
        assert alone.where == 0 and alone.phase in ("local", "colocated")
        assert encode(inst[0].sent[-1])["k"] == "submit"
        inst[0].state = InstanceState.DRAINING  # nothing at all: 503
        with pytest.raises(ServeError, match="no instance"):
            d.submit([1] * 30, SamplingParams(max_tokens=8))

    in_loop(check)


def test_the_routers_queue_order_reaches_the_worker() -> None:
    router = live_router(ServeConfig(mode="emulated", router="length-aware"))
    order = router.scheduler_config(build_engine(EngineSpec(
        model="dopd-tiny", role=Role.MIXED, mode="emulated")).scheduler.config)
    assert order.queue_order == "short-first"
    engine = build_engine(EngineSpec(model="dopd-tiny", role=Role.MIXED, mode="emulated",
                                     queue_order=order.queue_order, aging_s=order.aging_s,
                                     max_passes=order.max_passes))
    assert engine.scheduler.config.queue_order == "short-first"
    assert engine.scheduler.config.aging_s == order.aging_s == 5 * 1.0  # 5 TTFT SLOs


def test_book_ages_by_passes_as_the_scheduler_does() -> None:
    """The book's queue is the scheduler's queue model: a prompt passed ``max_passes`` times
    by later arrivals is aged and counted ahead of every new prompt (the rule the book once
    lacked), on the book and on a real scheduler fed the same requests alike."""
    from dopd.engine.block_manager import BlockManager
    from dopd.engine.plan import StepResult
    from dopd.engine.scheduler import Scheduler
    from dopd.engine.sequence import SchedulerConfig

    book = InstanceBook(FakeInstance(0, Role.MIXED), 16, "short-first", aging_s=100.0,
                        max_passes=1)
    sched = Scheduler(SchedulerConfig(max_batched_tokens=20, max_num_seqs=8,
                                      queue_order="short-first", aging_s=100.0, max_passes=1),
                      BlockManager(1000, 16))
    for rid, p in ((1, 500), (2, 20), (3, 30)):
        book.queue(rid, p, 4, now=0.0)
        sched.add_request(rid, p, 4, now=0.0)
    assert book.prefill_work_ahead(50) == sched.prefill_work_ahead(50) == (50, 1300, 2)
    plan = sched.schedule()  # the 20-token prompt goes first: it passes the 500-token one
    assert plan is not None and plan.prefill[0].request_id == 2
    sched.complete(plan, StepResult(plan.step_id, 0.01, (0,) * len(plan.sampling_ids)))
    book.decoding(2, 21)  # its first token: the book learns that it left the queue
    assert book.prefill_work_ahead(50) == sched.prefill_work_ahead(50) == (
        530, 500**2 + 30**2, 2)


@pytest.mark.parametrize("mode,tokens,seqs", [("real", 2048, 64), ("emulated", 8192, 256)])
def test_one_cluster_config_sizes_the_policy_the_router_and_the_workers(
        mode: str, tokens: int, seqs: int) -> None:
    """The deployment's ``ClusterConfig`` is built once and read by all: the ``dopd`` policy
    once planned real-mode instances of 8192 tokens / 256 requests while the workers ran
    2048 / 64."""
    from dopd.serve.runtime import ServeRuntime

    config = ServeConfig(mode=mode, policy="dopd", instances=2)
    runtime = ServeRuntime(config)  # builds everything; starts no worker
    cluster = runtime.cluster_config
    assert cluster is not None and (cluster.max_batched_tokens, cluster.max_num_seqs) == (
        tokens, seqs)
    assert runtime.policy._config is cluster  # type: ignore[attr-defined]
    assert runtime.router.context.max_batched_tokens == tokens
    assert (runtime.spec.max_batched_tokens, runtime.spec.max_num_seqs) == (tokens, seqs)
    explicit = ServeConfig(mode=mode, max_batched_tokens=512, max_num_seqs=8).cluster_config()
    assert (explicit.max_batched_tokens, explicit.max_num_seqs) == (512, 8)


def test_live_workers_get_the_policys_token_budget_of_mixed_instances() -> None:
    """The live path applies the ``dopd`` policy's MIXED token budget as the simulator does
    (:func:`dopd.control.flow.instances.scheduler_config`): the workers' engine spec carries it
    and the engine's scheduler caps MIXED steps with it."""
    from dopd.serve.runtime import ServeRuntime

    runtime = ServeRuntime(ServeConfig(mode="emulated", policy="dopd:mixtok=300", instances=2))
    assert runtime.policy.mixed_prefill_tokens == 300
    assert runtime.spec.mixed_prefill_tokens == 300
    engine = build_engine(dataclasses.replace(runtime.spec, model="dopd-tiny",
                                              step_time_scale=0.0))
    assert engine.scheduler.config.mixed_prefill_tokens == 300
    assert engine.scheduler.config.mixed_chunk_table is None
    auto = ServeRuntime(ServeConfig(mode="emulated", policy="dopd", instances=2))
    assert auto.spec.mixed_prefill_tokens == auto.policy.mixed_prefill_tokens is not None
    # the default's per-step table (mixtok=step) reaches the worker's scheduler too
    table = auto.policy.mixed_chunk_table
    assert table is not None and auto.spec.mixed_chunk_table == table
    worker = build_engine(dataclasses.replace(auto.spec, model="dopd-tiny", step_time_scale=0.0))
    assert worker.scheduler.config.mixed_chunk_table == table
    plain = ServeRuntime(ServeConfig(mode="emulated", policy="dopd:nohybrid", instances=2))
    assert plain.spec.mixed_prefill_tokens is None and plain.spec.mixed_chunk_table is None
