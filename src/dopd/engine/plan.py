"""The two plain data objects between an instance's scheduler and whatever executes a step.

The scheduler (:mod:`dopd.engine.scheduler`) emits a :class:`StepPlan`; a runner (the latency
model in simulation and emulation, the PyTorch model in the real engine) executes it and answers
with a :class:`StepResult`; the scheduler applies it and reports a :class:`StepOutcome`. Nothing
else crosses that boundary, so the same scheduler serves all three execution modes.

Token accounting used everywhere: a request with ``n`` prompt tokens has its prompt KV written by
prefill, which samples output token 1. Each decode step writes the KV of the last sampled token
and samples the next one, so a decoding request that has sampled ``g`` tokens holds ``n + g - 1``
tokens of KV (its *context*, as :mod:`dopd.perf` defines it) and its next step attends over
``n + g`` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FinishReason(StrEnum):
    """Why a request left an instance's scheduler."""

    LENGTH = "length"  # reached max_tokens
    STOP = "stop"  # the runner sampled EOS or a stop sequence
    ABORTED = "aborted"  # abort() by the caller
    KV_CAPACITY = "kv_capacity"  # can never fit in this instance's KV memory


@dataclass(frozen=True, slots=True)
class PrefillChunk:
    """``new_tokens`` prompt tokens of one request, after ``cached_tokens`` already in its KV.

    ``completes_prompt`` marks the chunk that finishes the prompt: the runner samples the
    request's next token from it. ``block_table`` lists the KV block ids of the request, covering
    at least ``cached_tokens + new_tokens`` tokens.
    """

    request_id: int
    new_tokens: int
    cached_tokens: int
    completes_prompt: bool
    block_table: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class StepPlan:
    """One batch step of one instance.

    ``decode_ids[i]`` samples one token; its KV cache holds ``decode_context[i]`` tokens before
    the step (the step writes one more) in blocks ``decode_block_tables[i]``, which already cover
    the new token. The running sums are those of ``dopd.perf``'s ``step_time``:
    ``prefill_attn_sum`` = sum over chunks of ``new * (cached + new)``, ``decode_ctx_sum`` = sum
    of ``decode_context``.
    ``sampling_ids`` are the requests that sample a token in this step, in the order of
    :attr:`StepResult.tokens`: every decode, then every prompt-completing chunk.
    """

    step_id: int
    prefill: tuple[PrefillChunk, ...]
    decode_ids: tuple[int, ...]
    decode_context: tuple[int, ...]
    decode_block_tables: tuple[tuple[int, ...], ...]
    prefill_new_tokens: int
    prefill_attn_sum: int
    decode_ctx_sum: int
    sampling_ids: tuple[int, ...]

    @property
    def prefill_count(self) -> int:
        return len(self.prefill)

    @property
    def decode_count(self) -> int:
        return len(self.decode_ids)

    @property
    def num_tokens(self) -> int:
        """Tokens processed by the step (the token-budget measure)."""
        return self.prefill_new_tokens + len(self.decode_ids)


@dataclass(frozen=True, slots=True)
class StepResult:
    """What a runner reports for one :class:`StepPlan`.

    ``tokens[i]`` is the token sampled for ``plan.sampling_ids[i]`` (the simulator uses 0s).
    ``finished`` lists requests the runner ended early, with the reason (EOS or a stop sequence:
    ``FinishReason.STOP``); requests reaching ``max_tokens`` are finished by the scheduler.
    """

    step_id: int
    duration_s: float
    tokens: tuple[int, ...]
    finished: tuple[tuple[int, FinishReason], ...] = ()


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What applying a step (or a decode run) changed, for the caller to act on.

    ``first_token`` : requests that sampled their first output token in this step (colocated TTFT).
    ``prefilled`` : prompts completed on a prefill-only instance; their KV stays allocated until
    :meth:`Scheduler.release` (after the KV transfer).
    ``finished`` : requests done, with the reason; their KV is already freed.
    ``preempted`` : running requests evicted for recompute while planning (informational).
    """

    first_token: tuple[int, ...] = ()
    prefilled: tuple[int, ...] = ()
    finished: tuple[tuple[int, FinishReason], ...] = ()
    preempted: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class DecodeRun:
    """A macro step: ``steps`` decode-only steps of the same ``decode_count`` requests.

    The context sum (KV tokens before the step) of the first step is ``ctx_sum_start``; it
    grows by ``decode_count`` per step, as ``dopd.perf``'s ``decode_run_time`` assumes. Used by
    the simulator (one event for many steps); the real engine never makes one.
    """

    run_id: int
    decode_count: int
    ctx_sum_start: int
    steps: int


EMPTY_OUTCOME = StepOutcome()
