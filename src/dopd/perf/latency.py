"""Analytic roofline latency model of one engine step (see ``dopd.perf.base`` for the terms).

Per GPU of a ``tp``-way instance, for ``T = sum(n_i) + B`` tokens and ``S = P + B`` sampled
sequences (``P`` prefill chunks, ``B`` decode sequences):

- linear layers: compute ``(2 * matmul_params / tp * (T + pad) + 2 * vocab * hidden / tp * S)``
  FLOPs at ``mfu * peak`` (lm_head only for the sampled positions, as vLLM computes logits only
  there; ``pad`` models the low efficiency of skinny GEMMs) against streaming the weights once at
  ``hbm_efficiency * bandwidth``; ``gemm = max(c, m) + overlap_loss * min(c, m)``.
- prefill attention: ``4 * head_dim * heads / tp * layers`` FLOPs per (query, key) pair at
  ``attn_efficiency * peak``, plus ``score_bytes`` of HBM traffic per score element and head for an
  unfused kernel. Pairs: the full ``sum n_i (c_i + n_i)`` when the kernel computes masked scores,
  else the causal count ``sum n_i c_i + n_i (n_i + 1) / 2``, which from running sums is
  ``S_attn - N^2 / (2P) + N / 2`` (``N = sum n_i``): exact for equal-length chunks and an upper
  bound otherwise (it uses ``N^2 / P <= sum n_i^2``), never above the full count. Being a
  function of sums, it can shrink by up to ``N / P`` pairs when a token is added to a chunk much
  shorter than the mean; the token's GEMM cost outweighs that unless the mean chunk is longer than
  about ``matmul_params / (2 hidden layers) * attn_efficiency / mfu`` tokens (17k for Llama-3-8B
  under ``modern``), so step time grows with every token for any realistic token budget.
- decode attention: reads ``sum (ctx_j + 1)`` tokens of KV at ``kv_read_efficiency * bandwidth``
  (memory bound: its FLOP/byte ratio is 1-8, far below any GPU's ridge point).
- tensor parallelism: two ring all-reduces per layer of ``T * hidden * dtype`` bytes, each taking
  ``allreduce_latency + 2 (tp - 1) * (hop_latency + bytes / tp / (allreduce_efficiency * link))``
  (a ring all-reduce moves ``2 (tp - 1) / tp`` of the message per GPU in ``2 (tp - 1)`` steps).
- overheads: per step, per layer (kernel launches) and per sequence (scheduling, sampling).

Compute, memory and communication time add up across these components (they are separate
kernels); only inside the linear layers do compute and weight streaming overlap. A decode-only
step is therefore ``alpha(B) + slope * decode_ctx_sum`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from dopd.perf.base import BatchShape, LatencyModel, StepBreakdown
from dopd.perf.hardware import HardwareSpec, get_gpu
from dopd.perf.kv import check_tp, kv_bytes_per_token_per_gpu, kv_capacity_tokens
from dopd.perf.model_catalog import ModelSpec, get_model
from dopd.perf.presets import EnginePreset, get_preset


@dataclass(frozen=True, slots=True)
class AttentionTerms:
    """Roofline attention costs in seconds: per (query, key) pair of prefill attention (FLOPs and
    score traffic) and per KV token read by decode attention; ``causal`` as the preset's
    ``causal_skip`` (see the module docstring)."""

    pair_flops_s: float
    pair_bytes_s: float
    causal: bool
    kv_token_s: float


def attention_terms(spec: ModelSpec, hw: HardwareSpec, tp: int,
                    pre: EnginePreset) -> AttentionTerms:
    """The attention costs of ``spec`` on ``tp`` GPUs ``hw`` under ``pre``."""
    heads_per_gpu = spec.heads / tp
    return AttentionTerms(
        pair_flops_s=4.0 * spec.head_dim * heads_per_gpu * spec.layers
        / (hw.flops * pre.attn_efficiency),
        pair_bytes_s=pre.score_bytes * heads_per_gpu * spec.layers
        / (hw.hbm_Bps * pre.hbm_efficiency),
        causal=pre.causal_skip,
        kv_token_s=kv_bytes_per_token_per_gpu(spec, tp) / (hw.hbm_Bps * pre.kv_read_efficiency),
    )


class RooflineLatencyModel(LatencyModel):
    """Roofline step-time model of ``model`` on ``tp`` GPUs of type ``gpu`` under ``preset``.

    ``kv_capacity_tokens`` defaults to :func:`dopd.perf.kv.kv_capacity_tokens` at ``mem_util``;
    pass ``check_capacity=False`` to skip that (and allow models whose weights do not fit).
    """

    __slots__ = ("_ar_fixed", "_ar_tok", "_beta", "_c_fixed", "_c_samp", "_c_tok", "_causal",
                 "_fixed", "_kv_tok", "_layer_fixed", "_mem", "_mem_body", "_pair_bytes",
                 "_pair_flops", "_seq", "gpu",
                 "kv_capacity_tokens", "model", "name", "preset", "tp")

    def __init__(self, model: str | ModelSpec, gpu: str | HardwareSpec, tp: int = 1,
                 preset: str | EnginePreset = "modern", mem_util: float = 0.9,
                 check_capacity: bool = True) -> None:
        spec = get_model(model)
        hw = get_gpu(gpu)
        pre = get_preset(preset)
        check_tp(spec, tp)
        self.model = spec
        self.gpu = hw
        self.tp = tp
        self.preset = pre
        self.name = f"{spec.name} on {tp}x {hw.name} ({pre.name})"
        self.kv_capacity_tokens = (kv_capacity_tokens(spec, hw, tp, mem_util)
                                   if check_capacity else None)

        compute_rate = hw.flops * pre.mfu
        tok_flops = 2.0 * spec.matmul_params / tp
        self._c_tok = tok_flops / compute_rate
        self._c_fixed = tok_flops * pre.gemm_pad_tokens / compute_rate
        self._c_samp = 2.0 * spec.lm_head_params / tp / compute_rate
        self._mem = spec.streamed_weight_bytes / tp / (hw.hbm_Bps * pre.hbm_efficiency)
        self._mem_body = ((spec.streamed_weight_bytes - spec.lm_head_params * spec.dtype_bytes)
                          / tp / (hw.hbm_Bps * pre.hbm_efficiency))
        self._beta = pre.overlap_loss

        attn = attention_terms(spec, hw, tp, pre)
        self._pair_flops, self._pair_bytes = attn.pair_flops_s, attn.pair_bytes_s
        self._causal = attn.causal
        self._kv_tok = attn.kv_token_s

        if tp > 1:
            ring = 2.0 * (tp - 1) / tp
            msg_per_token = spec.hidden * spec.dtype_bytes
            self._ar_tok = 2 * spec.layers * ring * msg_per_token / (
                hw.link_Bps * pre.allreduce_efficiency)
            self._ar_fixed = 2 * spec.layers * (pre.allreduce_latency_s
                                                + 2 * (tp - 1) * pre.allreduce_hop_latency_s)
        else:
            self._ar_tok = 0.0
            self._ar_fixed = 0.0
        self._layer_fixed = spec.layers * pre.layer_overhead_s
        self._fixed = pre.step_overhead_s + self._layer_fixed + self._ar_fixed
        self._seq = pre.seq_overhead_s

    def step_time(self, prefill_new_tokens: int, prefill_attn_sum: int, prefill_count: int,
                  decode_count: int, decode_ctx_sum: int) -> float:
        tokens = prefill_new_tokens + decode_count
        if tokens == 0:
            return 0.0
        seqs = prefill_count + decode_count
        comp = self._c_tok * tokens + self._c_fixed + self._c_samp * seqs
        mem = self._mem
        t = comp + self._beta * mem if comp > mem else mem + self._beta * comp
        t += (self._fixed + self._ar_tok * tokens + self._seq * seqs
              + self._kv_tok * (decode_ctx_sum + decode_count))
        if prefill_count:
            if self._causal:
                pairs = (prefill_attn_sum
                         - prefill_new_tokens * prefill_new_tokens / (2 * prefill_count)
                         + prefill_new_tokens / 2)
            else:
                pairs = prefill_attn_sum
            t += (self._pair_flops + self._pair_bytes) * pairs
        return t

    def body_time(self, tokens: int) -> float:
        """Seconds of the layers outside attention for ``tokens`` tokens, as operator profiles
        measure them: linear layers (no LM head), TP all-reduces and per-layer overheads; no
        attention, no per-step or per-sequence overheads."""
        if tokens <= 0:
            return 0.0
        comp = self._c_tok * tokens + self._c_fixed
        mem = self._mem_body
        gemm = comp + self._beta * mem if comp > mem else mem + self._beta * comp
        return gemm + self._ar_fixed + self._ar_tok * tokens + self._layer_fixed

    def decode_coefficients(self, decode_count: int) -> tuple[float, float]:
        return self._decode_coefficients_linear(decode_count, self._kv_tok)

    def breakdown(self, batch: BatchShape) -> StepBreakdown:
        self.check_batch(batch)
        if batch.is_empty:
            return StepBreakdown(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, "idle")
        n, pc, b = batch.prefill_new_tokens, batch.prefill_count, batch.decode_count
        tokens, seqs = n + b, pc + b
        comp = self._c_tok * tokens + self._c_fixed + self._c_samp * seqs
        mem = self._mem
        gemm = max(comp, mem) + self._beta * min(comp, mem)
        pairs = 0.0
        if pc:
            pairs = float(batch.prefill_attn_sum)
            if self._causal:  # the hot path's running-sum form, so step_ms == step_time
                pairs += n / 2 - n * n / (2 * pc)
        attn_flops = self._pair_flops * pairs
        attn_bytes = self._pair_bytes * pairs
        kv_read = self._kv_tok * (batch.decode_ctx_sum + b)
        allreduce = self._ar_fixed + self._ar_tok * tokens
        overhead = self._fixed - self._ar_fixed + self._seq * seqs
        step = gemm + attn_flops + attn_bytes + kv_read + allreduce + overhead
        sides = {
            "compute": comp + attn_flops,
            "memory": mem + attn_bytes + kv_read,
            "communication": allreduce,
            "overhead": overhead,
        }
        bound = max(sides, key=lambda key: sides[key])
        ms = 1e3
        return StepBreakdown(
            step_ms=step * ms, gemm_ms=gemm * ms, gemm_compute_ms=comp * ms, weights_ms=mem * ms,
            attention_ms=(attn_flops + attn_bytes + kv_read) * ms,
            prefill_attention_ms=(attn_flops + attn_bytes) * ms, decode_attention_ms=kv_read * ms,
            allreduce_ms=allreduce * ms, overhead_ms=overhead * ms, bound=bound,
        )
