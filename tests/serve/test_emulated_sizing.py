"""Emulated workers are sized, timed and linked as the simulator's instances (fast, no server)."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from dopd.control.cluster_models import build_models
from dopd.engine.latency_runner import LatencyModelRunner, WallClock
from dopd.engine.model import SamplingParams
from dopd.errors import DopdError
from dopd.perf import KVTransferModel
from dopd.serve.engines import (
    MAX_EMULATED_KV_BYTES,
    EmulatedTokens,
    EngineSpec,
    ModeledLink,
    build_engine,
    engine_limits,
)
from dopd.serve.serve_config import ServeConfig
from dopd.sim.api import SimConfig
from dopd.types import Role

TINY_BLOCK_BYTES = 2 * 4 * 16 * 4 * 32 * 4  # layers, tokens/block, KV heads, head dim, float32


def emulated(role: Role = Role.MIXED, **kw: object) -> EngineSpec:
    return EngineSpec(model="dopd-tiny", role=role, mode="emulated", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("model", "gpu"), [("llama-3-8b", "a100-80gb"), ("llama-3-8b", "h200"),
                                            ("llama-2-7b", "a100-40gb")])
def test_emulated_limits_are_the_simulators(model: str, gpu: str) -> None:
    limits = engine_limits(emulated(perf_model=model, gpu=gpu), TINY_BLOCK_BYTES)
    sim = SimConfig(model=model, gpu=gpu)
    assert limits.num_blocks == limits.modeled_blocks == build_models(sim).kv_blocks
    assert (limits.block_size, limits.max_num_seqs, limits.max_batched_tokens) == (
        sim.block_size, sim.max_num_seqs, sim.max_batched_tokens)
    assert not limits.capped


def test_explicit_values_win_and_feed_the_model() -> None:
    spec = emulated(max_num_seqs=32, max_batched_tokens=2048, kv_mem_util=0.8)
    limits = engine_limits(spec, TINY_BLOCK_BYTES)
    sim = SimConfig(max_num_seqs=32, max_batched_tokens=2048, kv_mem_util=0.8)
    assert (limits.max_num_seqs, limits.max_batched_tokens) == (32, 2048)
    assert limits.num_blocks == build_models(sim).kv_blocks
    by_memory = engine_limits(replace(spec, kv_cache_mb=16.0), TINY_BLOCK_BYTES)
    assert by_memory.num_blocks is None and by_memory.kv_cache_mb == 16.0


def test_real_mode_keeps_its_defaults() -> None:
    spec = EngineSpec(model="dopd-tiny", role=Role.MIXED)
    limits = engine_limits(spec, TINY_BLOCK_BYTES)
    assert (limits.num_blocks, limits.kv_cache_mb, limits.max_num_seqs,
            limits.max_batched_tokens) == (None, 64.0, 64, 2048)
    assert engine_limits(replace(spec, max_num_seqs=8), TINY_BLOCK_BYTES).max_num_seqs == 8


def test_a_huge_modeled_cache_is_capped() -> None:
    per_block = MAX_EMULATED_KV_BYTES // 1000  # the A100's ~28k blocks do not fit
    limits = engine_limits(emulated(), per_block)
    assert limits.capped and limits.num_blocks == 1000 < (limits.modeled_blocks or 0)


def test_bad_names_are_clear_errors() -> None:
    with pytest.raises(DopdError, match="unknown GPU"):
        engine_limits(emulated(gpu="tpu-v9"), TINY_BLOCK_BYTES)


def test_serve_config_leaves_limits_to_the_mode() -> None:
    config = ServeConfig()
    assert config.kv_cache_mb is None and config.max_num_seqs is None
    assert config.max_batched_tokens is None
    for bad in ({"max_num_seqs": 0}, {"max_batched_tokens": 0}, {"kv_cache_mb": 0.0},
                {"kv_mem_util": 1.5}):
        with pytest.raises(DopdError):
            ServeConfig(**bad)  # type: ignore[arg-type]


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


def test_emulated_engine_has_the_modeled_cache_without_its_memory() -> None:
    before = _rss_mb()
    prefill = build_engine(emulated(role=Role.PREFILL, step_time_scale=0.0, name="p"))
    decode = build_engine(emulated(role=Role.DECODE, step_time_scale=0.0, name="d"))
    modeled = build_models(SimConfig()).kv_blocks
    assert prefill.blocks.num_blocks == decode.blocks.num_blocks == modeled
    assert prefill.cache.num_blocks == modeled  # ~1.7 GiB of dopd-tiny KV per engine ...
    assert _rss_mb() - before < 600  # ... of which only what is written is resident
    assert prefill.scheduler.config.max_num_seqs == SimConfig().max_num_seqs
    # The KV hand-off works on the lazily allocated caches.
    rid = prefill.add_request(list(range(40)), SamplingParams(max_tokens=5))
    handle = None
    for _ in range(10):
        for out in prefill.step():
            handle = out.kv_handle or handle
        if handle is not None:
            break
    assert handle is not None and handle.request_id == rid
    payload = prefill.fetch_kv(handle)
    assert payload.num_tokens == 40
    decode.accept_remote(handle)
    assert decode.deliver_kv(rid, payload)
    tokens = [t for out in decode.iter_outputs() for t in out.new_token_ids]
    assert len(tokens) == 4 and decode.stats.kv_imports == 1


class _Fixed:
    """A latency model whose every step takes ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def step_time(self, *_: int) -> float:
        return self.seconds


def test_back_to_back_steps_absorb_the_workers_own_time() -> None:
    engine = build_engine(emulated(step_time_scale=0.0))
    runner = WallClock(1.0)
    engine.runner = LatencyModelRunner(_Fixed(0.2), EmulatedTokens(engine.records),  # type: ignore[arg-type]
                                       runner)
    engine.add_request(list(range(8)), SamplingParams(max_tokens=4))
    t0 = time.perf_counter()
    engine.step()
    first = time.perf_counter() - t0
    time.sleep(0.15)  # the worker's own work between two steps
    runner.back_to_back = True
    t1 = time.perf_counter()
    engine.step()
    second = time.perf_counter() - t1
    # the second step counts from the first one's end: about 0.05 s left of its 0.2 s
    assert first >= 0.2 and second < 0.17
    runner.back_to_back = False
    t2 = time.perf_counter()
    engine.step()
    assert time.perf_counter() - t2 >= 0.2  # after idling, a step takes its whole time


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_modeled_link_times_transfers_as_the_simulator() -> None:
    clock = _Clock()
    model = KVTransferModel(base_latency_s=0.001, bandwidth_Bps=1e9)
    link = ModeledLink(model, kv_bytes_per_token=1000, scale=2.0, clock=clock)
    link.start(1, 1000)  # 1 MB: 1 ms of bytes + 1 ms base latency, times the scale 2
    assert link.due() == []
    assert link.next_due() == pytest.approx(100.004)
    clock.t = 100.001
    link.start(2, 1000)  # shares the bandwidth from here on
    clock.t = 100.0039
    assert link.due() == []
    # Request 1 had 0.5 MB left when request 2 started: 1 model ms at half the bandwidth.
    assert link.next_due() == pytest.approx(100.001 + 2 * (0.001 + 0.001))
    clock.t = 100.0051
    assert link.due() == [1]
    clock.t = 100.1
    assert link.due() == [2] and link.next_due() is None
    instant = ModeledLink(model, kv_bytes_per_token=1000, scale=0.0, clock=clock)
    instant.start(7, 10**6)
    assert instant.due() == [7] and instant.due() == []


def test_link_of_a_spec_uses_the_latency_models_kv_bytes() -> None:
    link = ModeledLink.of(emulated(gpu="h200", step_time_scale=3.0))
    models = build_models(SimConfig(gpu="h200"))
    assert link.kv_bytes_per_token == models.kv_bytes_per_token
    assert link.transfer == models.transfer and link.scale == 3.0


@pytest.mark.slow
def test_live_hand_off_waits_for_the_modeled_transfer(server_factory) -> None:  # type: ignore[no-untyped-def]
    import openai

    # Llama-2-7B's KV is 512 KiB per token: 1900 tokens are ~1 GB, 50 ms over an A100's NIC
    # (20 GB/s achieved) plus 1 ms, times the step-time scale 4: the first token (sampled by
    # the prefill worker) streams once the KV is at the decode worker, >= 0.2 s after the send,
    # as the simulator counts it; the second follows one decode step later.
    server = server_factory("--instances", "2", "--policy", "static:1:1", "--mode", "emulated",
                            "--perf-model", "llama-2-7b", "--step-time-scale", "4")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    stamps = []
    sent = time.perf_counter()
    stream = client.completions.create(model="dopd-tiny", prompt="x" * 1900, max_tokens=4,
                                       stream=True, extra_body={"ignore_eos": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            stamps.append(time.perf_counter())
    assert len(stamps) == 4
    assert stamps[0] - sent >= 0.2
    cluster = server.get("/v1/cluster").json()
    assert cluster["instances"][1]["stats"]["kv_imports"] == 1


def test_emulated_engine_is_built_with_the_simulators_runner() -> None:
    """One runner class: an emulated engine runs ``LatencyModelRunner`` (the simulator's) with
    a wall clock, built in, and its steps take the latency model's time times the scale."""
    spec = emulated(step_time_scale=0.5)
    engine = build_engine(spec)
    runner = engine.runner
    assert isinstance(runner, LatencyModelRunner)
    assert isinstance(runner.clock, WallClock) and runner.clock.scale == 0.5
    latency = build_models(SimConfig(model=spec.perf_model, gpu=spec.gpu, instances=1)).latency
    engine.add_request(list(range(200)), SamplingParams(max_tokens=2))
    t0 = time.perf_counter()
    engine.step()
    took = time.perf_counter() - t0
    predicted = latency.step_time(200, 200 * 200, 1, 0, 0)
    assert took >= 0.5 * predicted
    assert runner.step_time(engine.last_plan) == pytest.approx(predicted)  # type: ignore[arg-type]
