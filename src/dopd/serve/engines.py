"""The engine of one worker: the real PyTorch engine, or the emulated one.

Both are a :class:`~dopd.engine.llm_engine.LLMEngine` (same scheduler, block manager, leases
and KV import/export over a real paged cache). In emulated mode the runner is
:class:`EmulatedRunner`: it does not run the model; it appends deterministic tokens and sleeps
for the step time that a ``dopd.perf`` latency model predicts (times ``scale``), so the live
stack runs at GPU-like timings on a CPU. The KV that moves between emulated workers is the real
(zero) content of the loaded model's cache, with that model's size per token.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch

from dopd.engine.engine_options import EngineOptions
from dopd.engine.llm_engine import LLMEngine
from dopd.engine.model import Tokenizer, check_stop
from dopd.engine.plan import FinishReason, StepPlan, StepResult
from dopd.engine.request_state import RequestRecord
from dopd.engine.runner import StepTimeModel
from dopd.engine.sequence import SchedulerConfig
from dopd.errors import require
from dopd.types import Role

_FIRST, _SPAN = 97, 26  # emulated tokens are the bytes 'a'..'z'


class EmulatedRunner:
    """Executes a plan by sleeping for its predicted duration; tokens are a fixed function of
    the request id and position (never EOS), so outputs are reproducible across P/D paths."""

    __slots__ = ("eos", "latency", "records", "scale", "tokenizer")

    def __init__(self, records: Mapping[int, RequestRecord], latency: StepTimeModel,
                 scale: float, eos_token_ids: Collection[int] = (),
                 tokenizer: Tokenizer | None = None) -> None:
        require(scale >= 0, f"step time scale must be >= 0, got {scale}")
        self.records = records
        self.latency = latency
        self.scale = scale
        self.eos = frozenset(eos_token_ids)
        self.tokenizer = tokenizer

    def step_time(self, plan: StepPlan) -> float:
        return self.scale * self.latency.step_time(
            plan.prefill_new_tokens, plan.prefill_attn_sum, len(plan.prefill),
            len(plan.decode_ids), plan.decode_ctx_sum)

    def execute(self, plan: StepPlan) -> StepResult:
        start = time.perf_counter()
        duration = self.step_time(plan) if self.scale > 0 else 0.0
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
        left = duration - (time.perf_counter() - start)
        if left > 0:
            time.sleep(left)
        return StepResult(plan.step_id, max(duration, time.perf_counter() - start),
                          tuple(tokens), tuple(finished))


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """How a worker builds its engine (plain data: it crosses the process boundary).

    ``perf_model``/``gpu``/``preset`` select the latency model of emulated mode.
    """

    model: str
    role: Role
    mode: str = "real"
    name: str = "engine"
    max_model_len: int | None = None
    kv_cache_mb: float = 64.0
    max_num_seqs: int = 64
    max_batched_tokens: int = 2048
    kv_timeout_s: float = 5.0
    kv_lease_s: float = 10.0
    perf_model: str = "llama-3-8b"
    gpu: str = "a100-80gb"
    preset: str = "modern"
    step_time_scale: float = 1.0
    seed: int = 0


def build_engine(spec: EngineSpec) -> LLMEngine:
    """The worker's engine (one torch thread); emulated mode swaps in :class:`EmulatedRunner`."""
    options = EngineOptions(
        role=spec.role,
        scheduler=SchedulerConfig(max_batched_tokens=spec.max_batched_tokens,
                                  max_num_seqs=spec.max_num_seqs),
        kv_cache_mb=spec.kv_cache_mb, max_model_len=spec.max_model_len, threads=1,
        seed=spec.seed, kv_lease_s=spec.kv_lease_s, kv_timeout_s=spec.kv_timeout_s)
    torch.set_num_threads(1)
    engine = LLMEngine.from_pretrained(spec.model, options, name=spec.name)
    if spec.mode == "emulated":
        from dopd.perf.factory import build_latency_model

        latency = build_latency_model(spec.perf_model, spec.gpu, preset=spec.preset)
        engine.runner = EmulatedRunner(engine.records, latency, spec.step_time_scale,
                                       engine.model.config.eos_token_ids, engine.tokenizer)
    return engine
