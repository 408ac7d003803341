"""The length-aware router's parts: options, predictions, lanes, placement, bypass, admission."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dopd.control.cluster_models import build_models
from dopd.control.routing import LengthAwareOptions, LengthAwareRouter, LengthWindow, parse_options
from dopd.control.routing.predict import drain_s, prefill_done_s, request_cost_s
from dopd.control.routing.router import ROUTERS, Router, RouterContext, make_router
from dopd.engine import LatencyModelRunner, SchedulerConfig, StepResult
from dopd.errors import DopdError
from dopd.sim.api import SimConfig
from dopd.sim.instance import SimInstance
from dopd.types import SLO, InstanceState, Role

CONFIG = SimConfig(instances=4)
MODELS = build_models(CONFIG)
SLO_ = SLO(ttft_s=1.0, tpot_s=0.05)


def context(slo: SLO | None = SLO_) -> RouterContext:
    return RouterContext.of(CONFIG, MODELS, slo)


def router(options: str = "", slo: SLO | None = SLO_) -> LengthAwareRouter:
    built = make_router("length-aware" + (":" + options if options else ""), context(slo))
    assert isinstance(built, LengthAwareRouter)
    return built


def instance(index: int, role: Role, sched: SchedulerConfig | None = None) -> SimInstance:
    config = sched or SchedulerConfig(max_batched_tokens=CONFIG.max_batched_tokens,
                                      watermark=MODELS.watermark)
    return SimInstance(index, role, InstanceState.ACTIVE, 0.0, config, MODELS.kv_blocks,
                       CONFIG.block_size)


# ---------------------------------------------------------------------------------- options
def test_options_parse_with_defaults_and_reject_bad_input() -> None:
    assert parse_options("") == LengthAwareOptions()
    opts = parse_options("bypass=off,admit_k=3,aging_s=auto,max_passes=4,order=fcfs")
    assert (opts.bypass, opts.admit_k, opts.aging_s, opts.max_passes, opts.order) == (
        False, 3.0, None, 4, "fcfs")
    assert parse_options("aging_s=0.5").aging_s == 0.5
    for bad, message in (("colour=red", "unknown option"), ("bypass=maybe", "on or off"),
                         ("admit_k=lots", "number"), ("admit_k=0.5", "admit_k"),
                         ("order=random", "order"), ("lane_quantile=1", "lane_quantile")):
        with pytest.raises(DopdError, match=message):
            parse_options(bad)


def test_router_specs_are_built_by_name_with_options() -> None:
    assert "length-aware" in ROUTERS
    assert router("bypass=off").options.bypass is False
    with pytest.raises(DopdError, match="takes no options"):
        make_router("pd-pair:bypass=off", context())
    with pytest.raises(DopdError, match="unknown router"):
        make_router("shortest", context())


def test_bypass_and_admission_need_an_slo() -> None:
    with pytest.raises(DopdError, match="needs an SLO"):
        router(slo=None)
    assert router("bypass=off,admit=off", slo=None).options.admit is False


def test_queue_order_reaches_the_instances_scheduler_config() -> None:
    base = SchedulerConfig()
    short = router().scheduler_config(base)
    assert (short.queue_order, short.aging_s, short.max_passes) == ("short-first", 5.0, 64)
    assert router("admit=off,bypass=off", slo=None).scheduler_config(base).aging_s == 10.0
    assert router("aging_s=0.3,max_passes=5").scheduler_config(base).aging_s == 0.3
    assert router("order=fcfs").scheduler_config(base) == base
    assert Router.scheduler_config(router(), base) == base


# ---------------------------------------------------------------------------------- predictions
def test_drain_time_is_the_sum_of_the_budget_sized_steps() -> None:
    lat = MODELS.latency
    budget = 8192
    # Four equal prompts of 4096 tokens prefill two per step in two steps.
    one_step = lat.step_time(8192, 2 * 4096 * 4096, 2, 0, 0)
    assert drain_s(lat, budget, 4 * 4096, 4 * 4096 * 4096, 4, 0, 0) == pytest.approx(
        2 * one_step, rel=1e-9)
    assert drain_s(lat, budget, 0, 0, 0, 10, 1000) == 0.0
    # Decodes share every step's budget: more steps.
    assert drain_s(lat, budget, 16384, 16384**2, 1, 200, 200_000) > drain_s(
        lat, budget, 16384, 16384**2, 1, 0, 0)


@pytest.mark.parametrize("order", ["fcfs", "short-first"])
def test_predicted_prefill_time_matches_running_the_queue(order: str) -> None:
    sched = SchedulerConfig(max_batched_tokens=CONFIG.max_batched_tokens,
                            watermark=MODELS.watermark, queue_order=order)
    inst = instance(0, Role.PREFILL, sched)
    rng = np.random.default_rng(0)
    for rid, n in enumerate(rng.integers(100, 6000, 12)):
        inst.sched.add_request(rid, int(n), 2)
    new_prompt = 1500
    predicted = prefill_done_s(context(), 0.0, inst, new_prompt)
    inst.sched.add_request(99, new_prompt, 2)
    runner = LatencyModelRunner(MODELS.latency)
    elapsed = 0.0
    done = False
    while not done:
        plan = inst.sched.schedule()
        assert plan is not None
        elapsed += runner.step_time(plan)
        out = inst.sched.complete(plan, StepResult(plan.step_id, 0.0, (0,) * len(
            plan.sampling_ids)))
        done = 99 in out.prefilled
    # The queue's attention sums count a chunk of a prompt at its full length: a few % high.
    assert predicted == pytest.approx(elapsed, rel=0.1)


def test_short_first_prediction_counts_only_the_work_ahead() -> None:
    fcfs = instance(0, Role.PREFILL)
    short = instance(1, Role.PREFILL, SchedulerConfig(queue_order="short-first"))
    for inst in (fcfs, short):
        for rid, n in enumerate([6000, 7000, 300]):
            inst.sched.add_request(rid, n, 2)
    ctx = context()
    # Short-first: done in the first step (which the longer prompts fill up); FCFS: 2 steps.
    assert prefill_done_s(ctx, 0.0, short, 500) < 0.7 * prefill_done_s(ctx, 0.0, fcfs, 500)
    assert prefill_done_s(ctx, 0.0, short, 10_000) == pytest.approx(
        prefill_done_s(ctx, 0.0, fcfs, 10_000))


# ---------------------------------------------------------------------------------- lanes
def test_length_window_opens_a_lane_only_for_heavy_tails() -> None:
    ctx = context()
    rng = np.random.default_rng(1)
    light = LengthWindow(1000, 0.9, 8.0)
    for n in rng.integers(500, 2000, 1000):
        light.observe(int(n), request_cost_s(ctx, int(n)))
    assert light.tail_ratio < 8 and light.lanes(4) == 0
    heavy = LengthWindow(1000, 0.9, 8.0)
    lengths = np.where(rng.random(1024) < 0.9, rng.integers(200, 800, 1024),
                       rng.integers(30_000, 60_000, 1024))
    for n in lengths:
        heavy.observe(int(n), request_cost_s(ctx, int(n)))
    # Refreshed every 32 arrivals over the last 1000.
    assert heavy.heavy and heavy.threshold == pytest.approx(np.quantile(lengths[-1000:], 0.9))
    assert heavy.is_long(60_000) and not heavy.is_long(500)
    # The long tenth of the prompts takes most of the prefill time, so most of the instances.
    assert heavy.long_share > 0.9
    assert heavy.lanes(4) == 3 and heavy.lanes(8) == 7 and heavy.lanes(1) == 0
    young = LengthWindow(1000, 0.9, 8.0)
    for n in lengths[:50]:
        young.observe(int(n), 1.0)
    assert young.lanes(4) == 0  # too few samples yet


# ---------------------------------------------------------------------------------- placement
def test_prefill_goes_where_the_queue_with_the_prompt_drains_first() -> None:
    r = router("bypass=off,admit=off")
    a, b, c = instance(0, Role.PREFILL), instance(1, Role.PREFILL), instance(2, Role.PREFILL)
    a.sched.add_request(1, 6000, 2)
    b.sched.add_request(2, 300, 2)
    c.sched.add_request(3, 5000, 2)
    c.sched.add_request(4, 5000, 2)
    placement = r.place(0.0, 1000, 10, [a, b, c], [], admit=True)
    assert placement.instance is b and not placement.bypass and not placement.reject
    assert r.select_prefill(0.0, 1000, 10, [a, c]) is a


def test_admission_rejects_only_when_the_best_prediction_is_hopeless() -> None:
    r = router("bypass=off")
    a, b = instance(0, Role.PREFILL), instance(1, Role.PREFILL)
    for rid in range(12):
        a.sched.add_request(rid, 8000, 2)
    assert r.place(0.0, 1000, 10, [a, b], [], admit=True).instance is b
    for rid in range(12, 24):
        b.sched.add_request(rid, 8000, 2)
    placement = r.place(0.0, 1000, 10, [a, b], [], admit=True)
    assert placement.instance is None and "predicted TTFT" in placement.reject
    assert "> 1 x TTFT SLO 1 s" in placement.reject
    # A request being re-routed is never rejected, nor with admission control off.
    assert r.place(0.0, 1000, 10, [a, b], [], admit=False).instance in (a, b)
    assert router("bypass=off,admit=off").place(0.0, 1000, 10, [a, b], [], True).reject == ""


def test_prompts_bypass_to_a_decode_instance_with_slack() -> None:
    r = router()
    p = instance(0, Role.PREFILL)
    d = instance(1, Role.DECODE)
    for rid in range(3):
        p.sched.add_request(rid, 4000, 2)
    placement = r.place(0.0, 200, 50, [p], [d], admit=True)
    assert placement.bypass and placement.instance is d
    assert r.place(0.0, 600, 50, [p], [d], admit=True).bypass  # any length that fits a step
    # Over bypass_tokens, or no TPOT slack for the step carrying it: normal prefill.
    assert not router("bypass_tokens=512").place(0.0, 600, 50, [p], [d], admit=True).bypass
    tight = router(slo=SLO(ttft_s=1.0, tpot_s=0.001))
    assert not tight.place(0.0, 200, 50, [p], [d], admit=True).bypass
    assert not router("bypass=off").place(0.0, 200, 50, [p], [d], admit=True).bypass
    # A mixed instance is a prefill candidate already, never a bypass target.
    assert not r.place(0.0, 200, 50, [p], [instance(2, Role.MIXED)], admit=True).bypass


def test_decode_placement_avoids_what_cannot_fit_for_a_whole_life() -> None:
    r = router()
    crowded, roomy = instance(0, Role.DECODE), instance(1, Role.DECODE)
    # "crowded" has one request whose output will fill most of its KV; "roomy" runs more
    # decodes now (a slower step) but has room for the new request's whole life.
    cap = (MODELS.kv_blocks - MODELS.watermark_blocks) * CONFIG.block_size
    assert crowded.sched.reserve_remote(1, 1000, 1, cap - 2000)
    crowded.sched.admit_remote(1)
    for rid in range(10, 30):
        assert roomy.sched.reserve_remote(rid, 2000, 1, 100)
        roomy.sched.admit_remote(rid)
    new = (5000, 3000)
    assert r.decode_model.step_after(crowded, new[0]) < r.decode_model.step_after(roomy, new[0])
    assert r.select_decode(0.0, *new, [crowded, roomy]) is roomy
    assert router("decode=off").select_decode(0.0, *new, [crowded, roomy]) is crowded
    # When nothing fits for a whole life, pd-pair's choice (free KV now) still places it.
    assert r.select_decode(0.0, *new, [crowded]) is crowded


def test_long_prompts_keep_to_the_lane_and_spill_over_only_to_be_rescued() -> None:
    ctx = context()
    for ttft_slo, rescued in ((1.0, False), (4.0, True)):
        r = router("bypass=off,admit=off,admit_k=1.5", slo=SLO(ttft_s=ttft_slo, tpot_s=0.05))
        for k in range(300):  # a heavy-tailed history: one long prompt in ten
            n = 50_000 if k % 10 == 0 else 500
            r.window.observe(n, request_cost_s(ctx, n))
        lanes = r.window.lanes(4)
        assert lanes >= 1
        insts = [instance(i, Role.PREFILL) for i in range(4)]
        lane, general = insts[-lanes:], insts[:-lanes]
        placement = r.place(0.0, 40_000, 10, insts, [], admit=False)
        assert placement.instance is lane[0]
        # Short prompts may go anywhere: an idle general instance is best.
        assert r.place(0.0, 300, 10, insts, [], admit=False).instance in general
        for rid, inst in enumerate(lane * 2):
            inst.sched.add_request(rid, 40_000, 2)
        # The lane now predicts over 1.5 x the SLO for a long prompt; an idle general instance
        # predicts about 4.5 s: under 1.5 x a 4 s SLO (rescued) but not under 1.5 x 1 s.
        placement = r.place(0.0, 40_000, 10, insts, [], admit=False)
        assert (placement.instance in general) == rescued
    assert math.isinf(LengthWindow(1000, 0.9, 8.0).threshold)


def test_expected_output_length_is_learned_from_finished_requests_only() -> None:
    r = router()
    prefill = [instance(0, Role.PREFILL)]
    decode = [instance(1, Role.DECODE)]
    prior = r.expected_output_tokens
    for _ in range(5):  # arrivals carry the trace's output length: the router must not read it
        r.place(0.0, 100, 10_000, prefill, decode, admit=True)
    assert r.expected_output_tokens == prior
    r.observe_finish(1.0, 100, 40)
    assert r.expected_output_tokens == 40.0
    for _ in range(200):
        r.observe_finish(2.0, 100, 200)
    assert 190.0 < r.expected_output_tokens <= 200.0
