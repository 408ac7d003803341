"""The engine of one worker: the real PyTorch engine, or the emulated one.

Both are a :class:`~dopd.engine.llm_engine.LLMEngine` (same scheduler, block manager, leases
and KV import/export over a real paged cache). In emulated mode the engine is built with the
simulator's runner, :class:`~dopd.engine.latency_runner.LatencyModelRunner`: it does not run the
model;
with :class:`EmulatedTokens` it appends deterministic tokens, and with a
:class:`~dopd.engine.latency_runner.WallClock` it waits for the step time that a ``dopd.perf``
latency
model predicts (times ``scale``), so the live stack runs at GPU-like timings on a CPU. The KV
that moves between emulated workers is the loaded model's cache, with that model's size per
token.

An emulated worker is sized as the simulator sizes an instance of the latency model's model and
GPU (:func:`engine_limits`: KV blocks, token budget, running-request cap), and a prefill worker
answers a KV fetch when the simulator's link model says the latency model's KV bytes would have
arrived (:class:`ModeledLink`), so ``dopd serve --mode emulated`` and ``dopd simulate`` run the
same instance model. Its KV cache is allocated lazily (``EngineOptions.lazy_kv``): memory pages are
taken on first write, so a capacity of a GPU's worth of tokens costs memory only for the KV
that is actually written there (imported by a decode worker; prefill writes none in emulation).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import torch

from dopd.control.cluster_config import ClusterConfig
from dopd.control.cluster_models import build_models
from dopd.engine.chunk_table import ChunkTable
from dopd.engine.engine_options import EngineOptions
from dopd.engine.latency_runner import LatencyModelRunner, SampledTokens, StepTimeModel, WallClock
from dopd.engine.llm_engine import LLMEngine
from dopd.engine.model import ModelConfig, Tokenizer, check_stop, load_model
from dopd.engine.plan import FinishReason, StepPlan
from dopd.engine.request_state import RequestRecord
from dopd.engine.sequence import SchedulerConfig
from dopd.engine.threads import approx_params, available_cores, default_threads
from dopd.errors import require
from dopd.kv.modeled_link import TransferNetwork
from dopd.perf.hardware import GiB
from dopd.perf.transfer import KVTransferModel
from dopd.serve.serve_config import REAL_KV_CACHE_MB, REAL_MAX_BATCHED_TOKENS, REAL_MAX_NUM_SEQS
from dopd.types import Role

_FIRST, _SPAN = 97, 26  # emulated tokens are the bytes 'a'..'z'

MAX_EMULATED_KV_BYTES = 16 * GiB
"""Most address space an emulated worker's lazily allocated KV cache may reserve; a larger
modeled capacity is cut to this (:attr:`EngineLimits.capped`). Resident memory is only what
is written, so the bound is on reservations, not on use."""

class EmulatedTokens:
    """The tokens of an emulated worker (a :class:`~dopd.engine.latency_runner.TokenSource`): a
    fixed
    function of the request id and position, never EOS, so outputs are reproducible across
    P/D paths; stop strings and stop token ids still apply."""

    __slots__ = ("eos", "records", "tokenizer")

    def __init__(self, records: Mapping[int, RequestRecord],
                 eos_token_ids: Collection[int] = (), tokenizer: Tokenizer | None = None) -> None:
        self.records = records
        self.eos = frozenset(eos_token_ids)
        self.tokenizer = tokenizer

    def sample(self, plan: StepPlan) -> SampledTokens:
        tokens: list[int] = []
        finished: list[tuple[int, FinishReason]] = []
        for rid in plan.sampling_ids:
            rec = self.records[rid]
            token = _FIRST + (rid * 7 + len(rec.prompt_ids) + len(rec.output_ids)) % _SPAN
            rec.output_ids.append(token)
            tokens.append(token)
            if rec.params.stop or rec.params.stop_token_ids:
                hit = check_stop(rec.output_ids, rec.params, self.eos, self.tokenizer)
                if hit is not None and hit.reason == FinishReason.STOP:
                    finished.append((rid, FinishReason.STOP))
        return tuple(tokens), tuple(finished)


def emulated_runner(engine: LLMEngine, latency: StepTimeModel,
                    scale: float) -> LatencyModelRunner:
    """The runner of an emulated worker's ``engine``: the simulator's
    :class:`~dopd.engine.latency_runner.LatencyModelRunner` of ``latency``, its steps taking
    ``scale``
    times the predicted time on the wall clock, with :class:`EmulatedTokens`."""
    tokens = EmulatedTokens(engine.records, engine.model.config.eos_token_ids, engine.tokenizer)
    return LatencyModelRunner(latency, tokens, WallClock(scale))


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """How a worker builds its engine (plain data: it crosses the process boundary).

    ``perf_model``/``gpu``/``preset`` (or ``calibration`` / ``profile``, as in
    :class:`~dopd.control.cluster_config.ClusterConfig`) select the latency model of emulated mode,
    and with
    ``kv_mem_util`` and ``kv_link`` its sizing and KV link (see :func:`engine_limits`).
    ``kv_cache_mb``, ``max_num_seqs`` and ``max_batched_tokens`` left None take the real
    defaults (64 MiB, 64, 2048) in real mode and the simulator's figures in emulated mode.
    ``device`` (real mode; see :func:`resolve_device`) and ``dtype`` (None: the device's
    default) place the model; ``index`` is the instance's number, which spreads workers over
    the GPUs this process sees. ``threads`` is the worker's torch thread count (None:
    :func:`dopd.engine.threads.default_threads` of the model, the cores shared among
    ``sharers`` workers). ``queue_order``, ``aging_s`` and ``max_passes`` order the
    prompts waiting for prefill (the router's choice; see
    :class:`~dopd.engine.sequence.SchedulerConfig`); ``mixed_prefill_tokens`` is the policy's
    token budget of MIXED steps that carry decodes (None: none; see
    :func:`dopd.control.flow.instances.scheduler_config`), applied whenever the worker is MIXED,
    and ``mixed_chunk_table`` its cap by the step's decodes (None: none).
    """

    model: str
    role: Role
    mode: str = "real"
    name: str = "engine"
    max_model_len: int | None = None
    kv_cache_mb: float | None = None
    max_num_seqs: int | None = None
    max_batched_tokens: int | None = None
    kv_timeout_s: float = 5.0
    kv_lease_s: float = 10.0
    perf_model: str = "llama-3-8b"
    gpu: str = "a100-80gb"
    preset: str = "modern"
    kv_mem_util: float = 0.9
    kv_link: str = "nic"
    step_time_scale: float = 1.0
    seed: int = 0
    device: str = "auto"
    dtype: str | None = None
    queue_order: str = "fcfs"
    aging_s: float = 5.0
    max_passes: int = 32
    mixed_prefill_tokens: int | None = None
    mixed_chunk_table: ChunkTable | None = None
    index: int = 0
    threads: int | None = None
    sharers: int = 1
    calibration: str | None = None
    profile: str | None = None


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """The resolved KV memory and batch limits of one worker's engine.

    ``num_blocks`` None sizes the cache from ``kv_cache_mb`` (MiB of the loaded model's KV);
    otherwise it is the block count. ``modeled_blocks`` is the simulator's block count for the
    latency model (emulated mode, None otherwise); ``capped`` says that ``num_blocks`` was cut
    below it by :data:`MAX_EMULATED_KV_BYTES`.
    """

    num_blocks: int | None
    kv_cache_mb: float
    block_size: int
    max_num_seqs: int
    max_batched_tokens: int
    modeled_blocks: int | None = None
    capped: bool = False


def sim_config_of(spec: EngineSpec) -> ClusterConfig:
    """The simulator's configuration of one instance like the emulated ``spec``."""
    base = ClusterConfig()
    return ClusterConfig(
        model=spec.perf_model, gpu=spec.gpu, preset=spec.preset, instances=1,
        calibration=spec.calibration, profile=spec.profile,
        kv_mem_util=spec.kv_mem_util, kv_link=spec.kv_link,
        max_num_seqs=spec.max_num_seqs if spec.max_num_seqs is not None else base.max_num_seqs,
        max_batched_tokens=spec.max_batched_tokens if spec.max_batched_tokens is not None
        else base.max_batched_tokens)


def engine_limits(spec: EngineSpec, kv_bytes_per_block: int) -> EngineLimits:
    """KV blocks and batch limits of the engine ``spec`` describes.

    Real mode: the given values, else 64 MiB, 64 requests, 2048 tokens. Emulated mode: what
    ``dopd simulate`` uses for an instance of ``perf_model`` on ``gpu`` (``ClusterConfig``
    defaults for the token budget and request cap; KV blocks from the latency model's KV
    capacity at ``kv_mem_util``), except for values the spec sets. ``kv_bytes_per_block`` is
    the loaded model's KV size per block, for the bound on the lazy cache. DopdError for
    unknown models or GPUs.
    """
    if spec.mode != "emulated":
        return EngineLimits(
            None, spec.kv_cache_mb if spec.kv_cache_mb is not None else REAL_KV_CACHE_MB,
            _block_size(),
            spec.max_num_seqs if spec.max_num_seqs is not None else REAL_MAX_NUM_SEQS,
            spec.max_batched_tokens if spec.max_batched_tokens is not None
            else REAL_MAX_BATCHED_TOKENS)
    sim = sim_config_of(spec)
    require(sim.block_size == _block_size(), f"the simulator's block size {sim.block_size} "
            f"differs from the engine's {_block_size()}")
    modeled = build_models(sim).kv_blocks
    require(kv_bytes_per_block >= 1, f"KV bytes per block must be >= 1, got {kv_bytes_per_block}")
    if spec.kv_cache_mb is not None:  # explicit memory of the loaded model: as in real mode
        return EngineLimits(None, spec.kv_cache_mb, sim.block_size, sim.max_num_seqs,
                            sim.max_batched_tokens, modeled)
    most = max(1, MAX_EMULATED_KV_BYTES // kv_bytes_per_block)
    blocks = min(modeled, most)
    return EngineLimits(blocks, blocks * kv_bytes_per_block / 2**20, sim.block_size,
                        sim.max_num_seqs, sim.max_batched_tokens, modeled, blocks < modeled)


def _block_size() -> int:
    return EngineOptions().block_size


def resolve_device(device: str, index: int, mode: str) -> str:
    """The torch device of a worker: ``cpu`` in emulated mode (it only keeps the KV layout);
    else ``auto`` is a GPU when torch sees one (``cuda:index mod count``; a Ray actor sees just
    the GPUs assigned to it) and ``cpu`` otherwise; ``cuda`` spreads the same way; ``cpu`` and
    ``cuda:N`` are taken as they are. DopdError when a GPU is asked for and none is visible."""
    if mode == "emulated" or device == "cpu":
        return "cpu"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "auto":
        return f"cuda:{index % count}" if count else "cpu"
    require(count > 0, f"device {device} asked for, but torch sees no GPU")
    if device == "cuda":
        return f"cuda:{index % count}"
    require(int(device.partition(":")[2]) < count,
            f"device {device} asked for, but torch sees {count} GPU(s)")
    return device


def build_engine(spec: EngineSpec) -> LLMEngine:
    """The worker's engine (torch threads: :func:`worker_threads`); emulated mode builds it
    with the latency-model runner (:func:`emulated_runner`) in place of the PyTorch one and a
    lazily allocated cache of :func:`engine_limits`'s size."""
    torch.set_num_threads(1)
    loaded = load_model(spec.model, device=resolve_device(spec.device, spec.index, spec.mode),
                        dtype=spec.dtype if spec.mode == "real" else None)
    cfg = loaded.model.config
    threads = worker_threads(spec, cfg)
    elem = torch.empty(0, dtype=loaded.model.dtype).element_size()
    per_block = 2 * cfg.num_layers * _block_size() * cfg.num_kv_heads * cfg.head_dim * elem
    limits = engine_limits(spec, per_block)
    options = EngineOptions(
        role=spec.role,
        scheduler=SchedulerConfig(max_batched_tokens=limits.max_batched_tokens,
                                  max_num_seqs=limits.max_num_seqs, queue_order=spec.queue_order,
                                  aging_s=spec.aging_s, max_passes=spec.max_passes,
                                  mixed_prefill_tokens=spec.mixed_prefill_tokens,
                                  mixed_chunk_table=spec.mixed_chunk_table),
        block_size=limits.block_size, num_blocks=limits.num_blocks,
        kv_cache_mb=limits.kv_cache_mb, max_model_len=spec.max_model_len, threads=threads,
        seed=spec.seed, kv_lease_s=spec.kv_lease_s, kv_timeout_s=spec.kv_timeout_s,
        lazy_kv=spec.mode == "emulated" and limits.num_blocks is not None)
    if spec.mode != "emulated":
        return LLMEngine(loaded, options, name=spec.name)
    latency = build_models(sim_config_of(spec)).latency
    return LLMEngine(loaded, options, name=spec.name,
                     runner=lambda engine: emulated_runner(engine, latency,
                                                           spec.step_time_scale))


def worker_threads(spec: EngineSpec, cfg: ModelConfig) -> int:
    """``spec.threads``, else 1 in emulated mode (steps sleep) and
    :func:`~dopd.engine.threads.default_threads` of the model in real mode, this machine's
    cores shared among ``spec.sharers`` workers."""
    if spec.threads is not None:
        return spec.threads
    if spec.mode == "emulated":
        return 1
    params = approx_params(cfg.hidden_size, cfg.intermediate_size, cfg.num_layers,
                           cfg.vocab_size, cfg.num_kv_heads * cfg.head_dim)
    return default_threads(params, available_cores(), sharers=spec.sharers)


class ModeledLink:
    """When each KV transfer of an emulated sender is done, by the simulator's link model.

    Transfers share the sender's bandwidth equally while in flight and arrive ``latency_s``
    after their last byte (:class:`dopd.kv.modeled_link.TransferNetwork`, run on the wall clock
    divided by ``scale``); the bytes are the latency model's KV bytes per token times the
    prompt tokens. ``scale`` 0: every transfer is done at once. Times are ``clock()`` seconds.
    """

    def __init__(self, transfer: KVTransferModel, kv_bytes_per_token: int, scale: float,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        require(scale >= 0, f"step time scale must be >= 0, got {scale}")
        self.transfer = transfer
        self.kv_bytes_per_token = kv_bytes_per_token
        self.scale = scale
        self.clock = clock
        self._t0 = clock()
        self._net = TransferNetwork(transfer.base_latency_s, transfer.bandwidth_Bps)
        self._next: tuple[float, int] | None = None  # the link's next bytes-done event
        self._arrivals: list[tuple[float, int]] = []  # (model time, request id)
        self._immediate: list[int] = []

    @classmethod
    def of(cls, spec: EngineSpec) -> ModeledLink:
        """The link of an emulated worker of ``spec``."""
        models = build_models(sim_config_of(spec))
        return cls(models.transfer, models.kv_bytes_per_token, spec.step_time_scale)

    def _now(self) -> float:
        return (self.clock() - self._t0) / self.scale

    def _advance(self, now: float) -> None:
        while self._next is not None and self._next[0] <= now:
            t, version = self._next
            res = self._net.complete(t, 0, version)
            if res is None:
                break
            done, self._next = res
            for rid in done:
                heapq.heappush(self._arrivals, (t + self.transfer.base_latency_s, rid))

    def start(self, request_id: int, num_tokens: int) -> None:
        """A transfer of ``num_tokens`` tokens' KV for ``request_id`` begins now."""
        if self.scale == 0:
            self._immediate.append(request_id)
            return
        now = self._now()
        self._advance(now)
        self._next = self._net.start(now, 0, request_id, num_tokens * self.kv_bytes_per_token)

    def due(self) -> list[int]:
        """Request ids whose transfer is done by now, in arrival order (each reported once)."""
        out, self._immediate = self._immediate, []
        if self.scale == 0:
            return out
        now = self._now()
        self._advance(now)
        while self._arrivals and self._arrivals[0][0] <= now:
            out.append(heapq.heappop(self._arrivals)[1])
        return out

    def next_due(self) -> float | None:
        """``clock()`` time of the next transfer to be done; None when none is in flight."""
        if self._immediate:
            return self.clock()
        times = [t for t, _ in self._arrivals[:1]]
        if self._next is not None:
            times.append(self._next[0] + self.transfer.base_latency_s)
        if not times:
            return None
        return self._t0 + min(times) * self.scale
