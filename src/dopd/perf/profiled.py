"""A latency model from measured operator profiles (see ``dopd.perf.profiles``).

For ``T = sum(n_i) + B`` tokens and ``S = P + B`` sampled sequences, one step costs::

    body(T)                       the profile: layers outside attention + TP all-reduces
  + lm_head(S)                    roofline: max(compute, weight streaming) + overlap loss
  + attention                     roofline, as in dopd.perf.latency (no attention profile ships)
  + step_overhead + seq_overhead * S   the preset's engine overheads (CPU side, not profiled)

``body`` is tabulated at every token count up to the profile's largest (interpolated linearly
between profiled counts) so :meth:`ProfileLatencyModel.step_time` is one list lookup plus
arithmetic; beyond the table it grows linearly. A decode-only step is
``alpha(B) + slope * decode_ctx_sum`` exactly, as the interface requires.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dopd.errors import require
from dopd.perf.base import BatchShape, LatencyModel, StepBreakdown
from dopd.perf.hardware import HardwareSpec, get_gpu
from dopd.perf.kv import check_tp, kv_capacity_tokens
from dopd.perf.latency import attention_terms
from dopd.perf.model_catalog import ModelSpec, get_model
from dopd.perf.presets import EnginePreset, get_preset
from dopd.perf.profiles import OperatorProfile, load_profile


class ProfileLatencyModel(LatencyModel):
    """Step times of ``model`` on ``tp`` GPUs ``gpu`` from ``profile`` (a shipped name, a folder
    or an :class:`OperatorProfile`), with attention and overheads from ``preset``.

    The profile must be of the model's shape, have the TP degree, and (when its manifest names
    one) be of the GPU type; otherwise ``DopdError``. KV capacity as in the roofline model.
    """

    __slots__ = (
        "_body",
        "_causal",
        "_fixed",
        "_kv_tok",
        "_last",
        "_lm_beta",
        "_lm_comp",
        "_lm_mem",
        "_pair",
        "_seq",
        "_slope",
        "_tmax",
        "gpu",
        "kv_capacity_tokens",
        "model",
        "name",
        "preset",
        "profile",
        "tp",
    )

    def __init__(self, model: str | ModelSpec, gpu: str | HardwareSpec, tp: int = 1,
                 profile: str | Path | OperatorProfile = "vidur-a100",
                 preset: str | EnginePreset = "modern", mem_util: float = 0.9,
                 check_capacity: bool = True) -> None:
        spec, hw, pre = get_model(model), get_gpu(gpu), get_preset(preset)
        check_tp(spec, tp)
        prof = profile if isinstance(profile, OperatorProfile) else load_profile(profile)
        prof.check_model(spec)
        prof.check_tp(tp)
        require(prof.gpu is None or prof.gpu == hw.name,
                f"profile {prof.name} was measured on {prof.gpu}, not {hw.name}")
        self.model, self.gpu, self.tp, self.preset, self.profile = spec, hw, tp, pre, prof
        self.name = f"{spec.name} on {tp}x {hw.name} (profile {prof.name}, {pre.name})"
        self.kv_capacity_tokens = (kv_capacity_tokens(spec, hw, tp, mem_util)
                                   if check_capacity else None)

        tmax = int(prof.layer_ms[tp][0][-1])
        grid = np.arange(tmax + 2)
        body = prof.nonattention_ms(spec, tp, grid) * 1e-3
        body[0] = 0.0
        self._body: list[float] = body.tolist()
        self._tmax = tmax
        self._last = self._body[tmax]
        self._slope = self._body[tmax + 1] - self._body[tmax]
        self._lm_comp = 2.0 * spec.lm_head_params / tp / (hw.flops * pre.mfu)
        self._lm_mem = spec.lm_head_params * spec.dtype_bytes / tp / (hw.hbm_Bps
                                                                       * pre.hbm_efficiency)
        self._lm_beta = pre.overlap_loss
        attn = attention_terms(spec, hw, tp, pre)
        self._pair = attn.pair_flops_s + attn.pair_bytes_s
        self._causal = attn.causal
        self._kv_tok = attn.kv_token_s
        self._fixed = pre.step_overhead_s
        self._seq = pre.seq_overhead_s

    def body_time(self, tokens: int) -> float:
        """Seconds outside attention for ``tokens`` tokens: the profile (no LM head, overheads)."""
        if tokens <= 0:
            return 0.0
        if tokens <= self._tmax:
            return self._body[tokens]
        return self._last + self._slope * (tokens - self._tmax)

    def step_time(self, prefill_new_tokens: int, prefill_attn_sum: int, prefill_count: int,
                  decode_count: int, decode_ctx_sum: int) -> float:
        tokens = prefill_new_tokens + decode_count
        if tokens == 0:
            return 0.0
        seqs = prefill_count + decode_count
        t = (self._body[tokens] if tokens <= self._tmax
             else self._last + self._slope * (tokens - self._tmax))
        comp = self._lm_comp * seqs
        mem = self._lm_mem
        t += comp + self._lm_beta * mem if comp > mem else mem + self._lm_beta * comp
        t += self._fixed + self._seq * seqs + self._kv_tok * (decode_ctx_sum + decode_count)
        if prefill_count:
            if self._causal:
                pairs = (prefill_attn_sum
                         - prefill_new_tokens * prefill_new_tokens / (2 * prefill_count)
                         + prefill_new_tokens / 2)
            else:
                pairs = prefill_attn_sum
            t += self._pair * pairs
        return t

    def decode_coefficients(self, decode_count: int) -> tuple[float, float]:
        return self._decode_coefficients_linear(decode_count, self._kv_tok)

    def breakdown(self, batch: BatchShape) -> StepBreakdown:
        self.check_batch(batch)
        if batch.is_empty:
            return StepBreakdown(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, "idle")
        n, pc, b = batch.prefill_new_tokens, batch.prefill_count, batch.decode_count
        tokens, seqs = n + b, pc + b
        body = self.body_time(tokens)
        allreduce = float(self.profile.allreduce_step_ms(self.model, self.tp,
                                                         np.array([tokens]))[0]) * 1e-3
        comp, mem = self._lm_comp * seqs, self._lm_mem
        lm_head = max(comp, mem) + self._lm_beta * min(comp, mem)
        pairs = 0.0
        if pc:
            pairs = float(batch.prefill_attn_sum)
            if self._causal:
                pairs += n / 2 - n * n / (2 * pc)
        pre_attn = self._pair * pairs
        kv_read = self._kv_tok * (batch.decode_ctx_sum + b)
        overhead = self._fixed + self._seq * seqs
        gemm = body - allreduce + lm_head
        step = gemm + allreduce + pre_attn + kv_read + overhead
        sides = {"profiled": gemm, "attention": pre_attn + kv_read,
                 "communication": allreduce, "overhead": overhead}
        ms = 1e3
        return StepBreakdown(
            step_ms=step * ms, gemm_ms=gemm * ms, gemm_compute_ms=0.0, weights_ms=0.0,
            attention_ms=(pre_attn + kv_read) * ms, prefill_attention_ms=pre_attn * ms,
            decode_attention_ms=kv_read * ms, allreduce_ms=allreduce * ms,
            overhead_ms=overhead * ms, bound=max(sides, key=lambda key: sides[key]),
        )
