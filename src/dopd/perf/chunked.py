"""A calibration form that holds for mixed chunked-prefill steps (prefill chunks plus decodes).

DistServe's form (``dopd.perf.fitted``) has one affine law per phase and has to guess how a
mixed step combines them. This form is one law over the step's running sums, whatever mix of
prefill chunks and decodes the step holds (all times in ms)::

    step_ms = a + b * T + sum_j e_j * max(T - k_j, 0)        linear layers, by tokens
            + c * A + g * C                                  prefill attention
            + d * K + s * S                                  decode KV reads, per-sequence work

with ``T = sum(n_i) + B`` tokens through the linear layers, ``A = sum(n_i (c_i + n_i))`` the
full prefill attention pairs, ``C = A - N^2 / (2P) + N / 2`` their causal count from running sums
(as in ``dopd.perf.latency``: exact for equal chunks; a fresh prompt has about half its pairs
masked, a late chunk on a long cache almost none, so a kernel that skips masked tiles needs
``C``), ``K = sum(ctx_j + 1)`` KV tokens read by decode attention and ``S = P + B`` sampled
sequences. The hinges at knots ``k_j`` let the token cost bend upward where the linear layers
turn from weight streaming to compute bound (a roofline knee that is smooth in practice). All
coefficients are ``>= 0``, so the cost is convex and non-decreasing in every input, and a
decode-only step is ``alpha(B) + d * decode_ctx_sum``, affine in the context sum as the
interface requires.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dopd.errors import require
from dopd.perf.base import BatchShape, LatencyModel, StepBreakdown

FORM = "chunked"


@dataclass(frozen=True, slots=True)
class ChunkedCoefficients:
    """The coefficients of the form in the module docstring: ms, ms per token / pair /
    sequence; ``hinges`` are ``(knot k_j in tokens, extra ms per token e_j)`` pairs."""

    intercept_ms: float
    token_ms: float
    hinges: tuple[tuple[float, float], ...]
    attn_pair_ms: float
    causal_pair_ms: float
    kv_token_ms: float
    seq_ms: float

    def __post_init__(self) -> None:
        values = [getattr(self, name) for name in ("intercept_ms", "token_ms", "attn_pair_ms",
                                                   "causal_pair_ms", "kv_token_ms", "seq_ms")]
        for knot, slope in self.hinges:
            values += [knot, slope]
        require(all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in values),
                "chunked calibration: every coefficient must be finite and >= 0")
        require(self.intercept_ms + self.token_ms > 0,
                "chunked calibration: a step must cost something")

    def step_ms(self, prefill_new_tokens: int, prefill_attn_sum: int, prefill_count: int,
                decode_count: int, decode_ctx_sum: int) -> float:
        """The form, in ms (0 for an empty step)."""
        tokens = prefill_new_tokens + decode_count
        if tokens == 0:
            return 0.0
        t = (self.intercept_ms + self.token_ms * tokens
             + self.attn_pair_ms * prefill_attn_sum
             + self.kv_token_ms * (decode_ctx_sum + decode_count)
             + self.seq_ms * (prefill_count + decode_count))
        if prefill_count:
            t += self.causal_pair_ms * causal_pairs(prefill_new_tokens, prefill_attn_sum,
                                                    prefill_count)
        for knot, slope in self.hinges:
            if tokens > knot:
                t += slope * (tokens - knot)
        return t


def causal_pairs(prefill_new_tokens: int, prefill_attn_sum: int, prefill_count: int) -> float:
    """Causal (query, key) pairs of the prefill chunks from running sums (module docstring)."""
    if not prefill_count:
        return 0.0
    n = prefill_new_tokens
    return prefill_attn_sum - n * n / (2 * prefill_count) + n / 2


class ChunkedLatencyModel(LatencyModel):
    """Step times from :class:`ChunkedCoefficients`; same interface as the other models."""

    __slots__ = ("_a", "_b", "_c", "_d", "_g", "_hinges", "_s", "coefficients",
                 "kv_capacity_tokens", "name")

    def __init__(self, coefficients: ChunkedCoefficients, kv_capacity_tokens: int | None = None,
                 name: str = "chunked calibration") -> None:
        require(kv_capacity_tokens is None or kv_capacity_tokens >= 1,
                f"KV capacity must be >= 1 token, got {kv_capacity_tokens}")
        self.coefficients = coefficients
        self.kv_capacity_tokens = kv_capacity_tokens
        self.name = name
        ms = 1e-3
        c = coefficients
        self._a, self._b = c.intercept_ms * ms, c.token_ms * ms
        self._hinges = tuple((float(k), e * ms) for k, e in c.hinges if e > 0)
        self._c, self._g = c.attn_pair_ms * ms, c.causal_pair_ms * ms
        self._d, self._s = c.kv_token_ms * ms, c.seq_ms * ms

    def _linear(self, tokens: int) -> float:
        t = self._b * tokens
        for knot, slope in self._hinges:
            if tokens > knot:
                t += slope * (tokens - knot)
        return t

    def step_time(self, prefill_new_tokens: int, prefill_attn_sum: int, prefill_count: int,
                  decode_count: int, decode_ctx_sum: int) -> float:
        tokens = prefill_new_tokens + decode_count
        if tokens == 0:
            return 0.0
        t = (self._a + self._b * tokens + self._c * prefill_attn_sum
             + self._d * (decode_ctx_sum + decode_count)
             + self._s * (prefill_count + decode_count))
        if prefill_count:
            t += self._g * (prefill_attn_sum
                            - prefill_new_tokens * prefill_new_tokens / (2 * prefill_count)
                            + prefill_new_tokens / 2)
        for knot, slope in self._hinges:
            if tokens > knot:
                t += slope * (tokens - knot)
        return t

    def decode_coefficients(self, decode_count: int) -> tuple[float, float]:
        return self._decode_coefficients_linear(decode_count, self._d)

    def breakdown(self, batch: BatchShape) -> StepBreakdown:
        self.check_batch(batch)
        if batch.is_empty:
            return StepBreakdown(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, "idle")
        n, b = batch.prefill_new_tokens, batch.decode_count
        tokens = n + b
        linear = self._linear(tokens)
        pre_attn = (self._c * batch.prefill_attn_sum
                    + self._g * causal_pairs(n, batch.prefill_attn_sum, batch.prefill_count))
        dec_attn = self._d * (batch.decode_ctx_sum + b)
        overhead = self._a + self._s * (batch.prefill_count + b)
        step = self.step_time(n, batch.prefill_attn_sum, batch.prefill_count, b,
                              batch.decode_ctx_sum)
        ms = 1e3
        return StepBreakdown(
            step_ms=step * ms, gemm_ms=linear * ms, gemm_compute_ms=0.0, weights_ms=0.0,
            attention_ms=(pre_attn + dec_attn) * ms, prefill_attention_ms=pre_attn * ms,
            decode_attention_ms=dec_attn * ms, allreduce_ms=0.0, overhead_ms=overhead * ms,
            bound="fitted",
        )
