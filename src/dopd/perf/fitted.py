"""A latency model from fitted DistServe-form coefficients (used instead of the roofline).

Coefficients are in milliseconds, in the form of DistServe's published fits::

    prefill_ms = a_p + b_p * sum(n_i) + c_p * sum(n_i * (c_i + n_i))
    decode_ms  = a_d + b_d * sum(ctx_j + 1) + c_d * B

The quadratic prefill term is the attention work, so for a chunk on ``c_i`` cached tokens it uses
``n_i * (c_i + n_i)`` (``= n_i^2`` for a fresh prompt, as in the published fits). Decode has one
coefficient set, or two split at ``decode_split_batch`` (the small-batch set for
``B < decode_split_batch``; DistServe uses 95). The published two-set fits are discontinuous at
the split (OPT-13B tp1: 23.6 ms at B = 94, 22.2 ms at B = 95, plus context terms); this model keeps
them as published.

A mixed step (prefill chunks and decode sequences together, as in chunked-prefill engines) costs::

    max(prefill_ms(sum(n) + B tokens) + b_d * sum(ctx + 1),
        decode_ms + b_p * sum(n) + c_p * sum(n (c + n)))

i.e. the decode tokens ride through the prefill's compute-bound GEMMs like extra prompt tokens
and add their KV reads, but the step never costs less than the decode step plus the prefill's
marginal work. Both terms grow with every input, so the mixed time is monotone and never below
either phase alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dopd.errors import require
from dopd.perf.base import BatchShape, LatencyModel, StepBreakdown

Coeffs = tuple[float, float, float]


def _check(coeffs: Coeffs, what: str, positive_intercept: bool) -> None:
    require(len(coeffs) == 3, f"{what} needs 3 coefficients (a, b, c), got {len(coeffs)}")
    require(all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in coeffs),
            f"{what} coefficients must be finite and >= 0, got {coeffs}")
    if positive_intercept:
        require(coeffs[0] > 0, f"{what} intercept must be > 0 ms, got {coeffs[0]}")


@dataclass(frozen=True, slots=True)
class DistServeCoefficients:
    """Prefill and decode coefficients in ms (see the module docstring).

    ``decode_large_b`` None means one decode set (``decode_small_b``) for every batch size.
    """

    prefill: Coeffs
    decode_small_b: Coeffs
    decode_large_b: Coeffs | None = None
    decode_split_batch: int = 95

    def __post_init__(self) -> None:
        _check(self.prefill, "prefill", positive_intercept=False)
        _check(self.decode_small_b, "decode", positive_intercept=True)
        if self.decode_large_b is not None:
            _check(self.decode_large_b, "large-batch decode", positive_intercept=True)
        require(self.decode_split_batch >= 2,
                f"decode split batch must be >= 2, got {self.decode_split_batch}")

    def decode_set(self, decode_count: int) -> Coeffs:
        """The decode coefficients that apply to a batch of ``decode_count`` sequences."""
        if self.decode_large_b is None or decode_count < self.decode_split_batch:
            return self.decode_small_b
        return self.decode_large_b


class FittedLatencyModel(LatencyModel):
    """Step times from :class:`DistServeCoefficients`; same interface as the roofline model."""

    __slots__ = ("_da_l", "_da_s", "_db_l", "_db_s", "_dc_l", "_dc_s", "_pa", "_pb", "_pc",
                 "_split", "coefficients", "kv_capacity_tokens", "name")

    def __init__(self, coefficients: DistServeCoefficients, kv_capacity_tokens: int | None = None,
                 name: str = "fitted") -> None:
        require(kv_capacity_tokens is None or kv_capacity_tokens >= 1,
                f"KV capacity must be >= 1 token, got {kv_capacity_tokens}")
        self.coefficients = coefficients
        self.kv_capacity_tokens = kv_capacity_tokens
        self.name = name
        ms = 1e-3
        self._pa, self._pb, self._pc = (v * ms for v in coefficients.prefill)
        self._da_s, self._db_s, self._dc_s = (v * ms for v in coefficients.decode_small_b)
        large = coefficients.decode_large_b or coefficients.decode_small_b
        self._da_l, self._db_l, self._dc_l = (v * ms for v in large)
        self._split = (coefficients.decode_split_batch if coefficients.decode_large_b is not None
                       else math.inf)

    def step_time(self, prefill_new_tokens: int, prefill_attn_sum: int, prefill_count: int,
                  decode_count: int, decode_ctx_sum: int) -> float:
        if decode_count:
            if decode_count < self._split:
                da, db, dc = self._da_s, self._db_s, self._dc_s
            else:
                da, db, dc = self._da_l, self._db_l, self._dc_l
            kv = db * (decode_ctx_sum + decode_count)
            decode = da + kv + dc * decode_count
            if not prefill_count:
                return decode
            marginal = self._pb * prefill_new_tokens + self._pc * prefill_attn_sum
            carried = self._pa + marginal + self._pb * decode_count + kv
            return carried if carried > decode + marginal else decode + marginal
        if not prefill_count:
            return 0.0
        return self._pa + self._pb * prefill_new_tokens + self._pc * prefill_attn_sum

    def decode_coefficients(self, decode_count: int) -> tuple[float, float]:
        require(decode_count >= 0, f"decode_count must be >= 0, got {decode_count}")
        if decode_count == 0:
            return 0.0, 0.0
        if decode_count < self._split:
            return self._da_s + (self._db_s + self._dc_s) * decode_count, self._db_s
        return self._da_l + (self._db_l + self._dc_l) * decode_count, self._db_l

    def breakdown(self, batch: BatchShape) -> StepBreakdown:
        self.check_batch(batch)
        step = self.step_time(batch.prefill_new_tokens, batch.prefill_attn_sum,
                              batch.prefill_count, batch.decode_count, batch.decode_ctx_sum)
        if batch.is_empty:
            return StepBreakdown(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, "idle")
        n, s, b = batch.prefill_new_tokens, batch.prefill_attn_sum, batch.decode_count
        pre_attn = self._pc * s if batch.prefill_count else 0.0
        dec_attn = linear = intercept = a_d = c_d = 0.0
        if b:
            a_d, b_d, c_d = (v * 1e-3 for v in self.coefficients.decode_set(b))
            dec_attn = b_d * (batch.decode_ctx_sum + b)
        if batch.prefill_count and b:
            if self._pa + self._pb * b > a_d + c_d * b:  # the branch step_time takes
                intercept, linear = self._pa, self._pb * (n + b)
            else:
                intercept, linear = a_d, c_d * b + self._pb * n
        elif b:
            intercept, linear = a_d, c_d * b
        else:
            intercept, linear = self._pa, self._pb * n
        ms = 1e3
        return StepBreakdown(
            step_ms=step * ms, gemm_ms=linear * ms, gemm_compute_ms=0.0, weights_ms=0.0,
            attention_ms=(pre_attn + dec_attn) * ms, prefill_attention_ms=pre_attn * ms,
            decode_attention_ms=dec_attn * ms, allreduce_ms=0.0, overhead_ms=intercept * ms,
            bound="fitted",
        )
