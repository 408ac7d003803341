"""The latency-model interface shared by the roofline and the fitted (calibrated) models.

A latency model predicts the wall time of one engine iteration ("step") over a batch of
prefill chunks and decode sequences. Terms used throughout:

- a prefill chunk has ``n`` new tokens on ``c`` already-cached tokens (``c = 0`` for a fresh
  prompt; ``c > 0`` for a later chunk of a chunked prefill or a prefix-cache hit);
- a decode sequence has context ``ctx``: the tokens already in its KV cache before the step; the
  step attends over ``ctx + 1`` tokens (the cache plus the token being generated) and appends one.

The hot path, :meth:`LatencyModel.step_time`, takes running sums only, so a scheduler can keep
them up to date in O(1) per admitted or finished sequence::

    prefill_new_tokens = sum(n_i)          prefill_attn_sum = sum(n_i * (c_i + n_i))
    prefill_count      = number of chunks  decode_count     = number of decode sequences
    decode_ctx_sum     = sum(ctx_j)

For a decode-only step the time is affine in ``decode_ctx_sum`` at fixed ``decode_count``
(``alpha(B) + slope * decode_ctx_sum``); after a decode step every context grows by one, so
``decode_ctx_sum`` grows by ``decode_count``, and a run of k decode steps has a closed-form total
(:meth:`decode_run_time`) that the simulator uses to skip ahead (:meth:`decode_steps_within`).
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

from dopd.errors import DopdError, require


@dataclass(frozen=True, slots=True)
class BatchShape:
    """One step's batch: prefill chunks as ``(new, cached)`` pairs and decode contexts."""

    prefill: tuple[tuple[int, int], ...] = ()
    decode: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for chunk in self.prefill:
            require(len(chunk) == 2, f"a prefill chunk is (new, cached), got {chunk!r}")
            new, cached = chunk
            require(isinstance(new, int) and new >= 1,
                    f"a prefill chunk needs >= 1 new token, got {new!r}")
            require(isinstance(cached, int) and cached >= 0,
                    f"cached tokens must be >= 0, got {cached!r}")
        for ctx in self.decode:
            require(isinstance(ctx, int) and ctx >= 0, f"decode context must be >= 0, got {ctx!r}")

    @property
    def prefill_new_tokens(self) -> int:
        return sum(new for new, _ in self.prefill)

    @property
    def prefill_attn_sum(self) -> int:
        return sum(new * (cached + new) for new, cached in self.prefill)

    @property
    def prefill_count(self) -> int:
        return len(self.prefill)

    @property
    def decode_count(self) -> int:
        return len(self.decode)

    @property
    def decode_ctx_sum(self) -> int:
        return sum(self.decode)

    @property
    def kv_tokens(self) -> int:
        """Tokens whose KV must be resident during the step (caches plus this step's tokens)."""
        return sum(c + n for n, c in self.prefill) + sum(ctx + 1 for ctx in self.decode)

    @property
    def is_empty(self) -> bool:
        return not self.prefill and not self.decode


@dataclass(frozen=True, slots=True)
class StepBreakdown:
    """Where a step's time goes, in milliseconds.

    ``step_ms`` is the predicted step time. ``gemm_ms`` is the time of the linear layers after the
    roofline combination of ``gemm_compute_ms`` (FLOPs) and ``weights_ms`` (weight streaming);
    ``attention_ms`` = ``prefill_attention_ms`` + ``decode_attention_ms``; ``allreduce_ms`` is TP
    communication; ``overhead_ms`` engine overheads (launches, scheduling, sampling). ``bound``
    names the largest of compute, memory, communication and overhead (``"fitted"`` for a fitted
    model, whose terms are not split by resource; for a profile model the largest of
    ``"profiled"`` (measured layers), ``"attention"``, communication and overhead; ``"idle"``
    for an empty batch).
    """

    step_ms: float
    gemm_ms: float
    gemm_compute_ms: float
    weights_ms: float
    attention_ms: float
    prefill_attention_ms: float
    decode_attention_ms: float
    allreduce_ms: float
    overhead_ms: float
    bound: str

    def as_dict(self) -> dict[str, float | str]:
        return dataclasses.asdict(self)


class LatencyModel(ABC):
    """Predicts engine step times; see the module docstring for the terms.

    Subclasses implement :meth:`step_time` (hot path: O(1), plain float arithmetic),
    :meth:`decode_coefficients` and :meth:`breakdown`. ``kv_capacity_tokens`` (None = unchecked)
    bounds the batches :meth:`breakdown` and :meth:`step_time_for` accept; the hot path never
    checks it.
    """

    __slots__ = ()

    name: str
    kv_capacity_tokens: int | None

    @abstractmethod
    def step_time(self, prefill_new_tokens: int, prefill_attn_sum: int, prefill_count: int,
                  decode_count: int, decode_ctx_sum: int) -> float:
        """Seconds of one step over the batch given by running sums; 0.0 for an empty batch."""

    @abstractmethod
    def decode_coefficients(self, decode_count: int) -> tuple[float, float]:
        """``(alpha, slope)`` with decode-only step time = alpha + slope * decode_ctx_sum."""

    @abstractmethod
    def breakdown(self, batch: BatchShape) -> StepBreakdown:
        """Component times of one step over ``batch``; ``DopdError`` if its KV exceeds capacity."""

    def _decode_coefficients_linear(self, decode_count: int, slope: float) -> tuple[float, float]:
        """:meth:`decode_coefficients` for a model whose decode-only step time is linear in the
        context sum with ``slope`` per token: alpha is the step at zero context."""
        require(decode_count >= 0, f"decode_count must be >= 0, got {decode_count}")
        if decode_count == 0:
            return 0.0, 0.0
        return self.step_time(0, 0, 0, decode_count, 0), slope

    def check_batch(self, batch: BatchShape) -> None:
        """Raise ``DopdError`` if ``batch`` needs more KV tokens than the instance holds."""
        cap = self.kv_capacity_tokens
        if cap is not None and batch.kv_tokens > cap:
            raise DopdError(
                f"batch needs KV for {batch.kv_tokens} tokens but {self.name} holds {cap}"
            )

    def step_time_for(self, batch: BatchShape) -> float:
        """Seconds of one step over ``batch`` (capacity checked)."""
        self.check_batch(batch)
        return self.step_time(batch.prefill_new_tokens, batch.prefill_attn_sum,
                              batch.prefill_count, batch.decode_count, batch.decode_ctx_sum)

    def decode_run_time(self, decode_count: int, ctx_sum_start: int, steps: int) -> float:
        """Total seconds of ``steps`` decode-only steps of ``decode_count`` sequences.

        The first step sees ``ctx_sum_start``; each later one ``decode_count`` more. Equals the sum
        of :meth:`step_time` over those steps (up to float rounding).
        """
        require(steps >= 0, f"steps must be >= 0, got {steps}")
        if steps == 0 or decode_count <= 0:
            return 0.0
        alpha, slope = self.decode_coefficients(decode_count)
        return _run_time(alpha, slope, decode_count, ctx_sum_start, steps)

    def decode_steps_within(self, decode_count: int, ctx_sum_start: int,
                            time_budget: float) -> int:
        """Largest k >= 0 with ``decode_run_time(decode_count, ctx_sum_start, k) <= time_budget``.

        Solved in closed form (a quadratic in k), then corrected by at most a step or two against
        :meth:`decode_run_time` so float rounding cannot overshoot the budget.
        """
        require(decode_count >= 1, f"decode_count must be >= 1, got {decode_count}")
        require(not math.isnan(time_budget), "time budget is NaN")
        if time_budget == math.inf:
            raise DopdError("time budget must be finite")
        alpha, slope = self.decode_coefficients(decode_count)
        first = alpha + slope * ctx_sum_start
        if time_budget < first:
            return 0
        # R(k) = qa * k^2 + qb * k with qa = slope*B/2 >= 0 and qb = first - qa.
        qa = slope * decode_count / 2
        qb = first - qa
        if qa <= 0.0:
            k = int(time_budget // first)
        else:
            disc = math.sqrt(qb * qb + 4 * qa * time_budget)
            root = 2 * time_budget / (qb + disc) if qb > 0 else (disc - qb) / (2 * qa)
            k = int(root)
        while _run_time(alpha, slope, decode_count, ctx_sum_start, k + 1) <= time_budget:
            k += 1
        while k > 0 and _run_time(alpha, slope, decode_count, ctx_sum_start, k) > time_budget:
            k -= 1
        return k


def _run_time(alpha: float, slope: float, decode_count: int, ctx_sum_start: int,
              steps: int) -> float:
    """Sum over i < steps of alpha + slope * (ctx_sum_start + i * decode_count)."""
    growth = slope * decode_count * (steps * (steps - 1) / 2)
    return steps * (alpha + slope * ctx_sum_start) + growth
