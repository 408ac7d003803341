"""Mutable per-request state inside one instance's scheduler (not part of any boundary)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from dopd.engine.chunk_table import ChunkTable
from dopd.errors import require

QUEUE_ORDERS = ("fcfs", "short-first")
"""Orders of a scheduler's waiting queue (:attr:`SchedulerConfig.queue_order`)."""


class SeqStatus(IntEnum):
    """Where a request is inside one scheduler."""

    WAITING = 0  # queued for (re)prefill, no KV
    PREFILLING = 1  # admitted: KV for the whole prefill allocated, chunks under way
    HELD = 2  # prompt done on a prefill-only instance; KV kept until released
    RESERVED = 3  # remote decode: KV blocks reserved, bytes not arrived yet
    DECODING = 4  # in the running decode batch


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Batching limits of one instance's scheduler.

    ``max_batched_tokens`` is the token budget of a step (prefill tokens + one per decode);
    ``max_num_seqs`` caps the requests holding a running slot (prefilling, reserved or decoding).
    ``chunked_prefill`` splits prompts over steps to fill the budget; without it a prompt is
    prefilled whole (alone in its step when it exceeds the budget). ``prefill_priority`` runs
    admissible prefills in prefill-only steps before any decode (vLLM's classic scheduler);
    otherwise decodes go first and prefills fill the remaining budget (chunked-prefill style).
    ``watermark`` is the fraction of KV blocks that admissions must leave free.
    ``mixed_prefill_tokens`` (None: no cap) caps the prompt tokens of a MIXED instance's step
    that also carries decodes (a per-role token budget: the decodes' step stays short; a step
    without decodes prefills up to ``max_batched_tokens``). ``mixed_chunk_table`` (None: none)
    caps them further by the step's decodes (see :class:`~dopd.engine.chunk_table.ChunkTable`).
    ``queue_order`` orders new prompts waiting for prefill: ``"fcfs"`` (arrival order) or
    ``"short-first"`` (shortest prompt first, with aging: a prompt that has waited ``aging_s``
    seconds, or that ``max_passes`` later arrivals have overtaken, goes before every prompt not
    yet aged; see :class:`dopd.engine.waitqueue.ShortFirstQueue`). Requests preempted for
    recompute always go first.
    """

    max_batched_tokens: int = 8192
    max_num_seqs: int = 256
    chunked_prefill: bool = True
    prefill_priority: bool = False
    watermark: float = 0.01
    queue_order: str = "fcfs"
    aging_s: float = 5.0
    max_passes: int = 32
    mixed_prefill_tokens: int | None = None
    mixed_chunk_table: ChunkTable | None = None

    def __post_init__(self) -> None:
        require(self.max_batched_tokens >= 1, "max batched tokens must be >= 1")
        require(self.mixed_prefill_tokens is None or self.mixed_prefill_tokens >= 1,
                f"mixed prefill tokens must be >= 1, got {self.mixed_prefill_tokens}")
        require(self.max_num_seqs >= 1, "max num seqs must be >= 1")
        require(0 <= self.watermark < 1, f"watermark must be in [0, 1), got {self.watermark}")
        require(self.queue_order in QUEUE_ORDERS, f"unknown queue order {self.queue_order!r} "
                f"(known: {', '.join(QUEUE_ORDERS)})")
        require(self.aging_s > 0, f"aging bound must be > 0 s, got {self.aging_s}")
        require(self.max_passes >= 0, f"max passes must be >= 0, got {self.max_passes}")


class Seq:
    """One request's progress: ``prefill_len`` tokens to prefill (the prompt, or prompt plus
    sampled tokens when recomputing after preemption), ``computed`` of them done, ``generated``
    output tokens sampled, ``kv_len`` tokens of KV while decoding. ``queued_s`` (the caller's
    clock at intake) and ``order`` (>= 0 while ordered in a short-first queue) serve the
    waiting queue's aging."""

    __slots__ = ("computed", "generated", "kv_len", "local", "max_tokens", "order",
                 "prefill_len", "prompt", "queued_s", "request_id", "status")

    def __init__(self, request_id: int, prompt: int, max_tokens: int, generated: int = 0) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.generated = generated
        self.prefill_len = prompt + generated
        self.computed = 0
        self.kv_len = 0
        self.status = SeqStatus.WAITING
        self.queued_s = 0.0
        self.order = -1
        self.local = False  # decoded here even on a PREFILL instance (colocated fallback)

    @property
    def remaining_prefill(self) -> int:
        return self.prefill_len - self.computed
