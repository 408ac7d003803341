"""Live routing: the control plane's routers (:mod:`dopd.control.routing.router`) placing
``dopd serve``'s requests.

A router reads instances through :class:`~dopd.control.routing.load.InstanceLoad`: the
scheduler's running sums (prompts queued for prefill, decode batch and context, KV blocks,
final KV), the hand-offs on their way, and when the step in progress ends. Here an
:class:`InstanceBook` keeps those sums for one worker from what the front end itself sends and
hears (submits, first tokens, output counts, hand-offs, KV arrivals, ends), so it is never
older than the last message; its queue is the scheduler's own queue model
(:func:`dopd.engine.waitqueue.work_ahead`, aging rules included). The worker's stats give its
KV size and recent step time. What the book cannot see is how far a chunked
prompt has got: a prompt counts as queued until its first token.

:func:`live_router` builds the router of a deployment: the policy's own (``auto``) or a named
one, with the latency model of ``perf_model`` on ``gpu`` (the deployment's learned belief,
:mod:`dopd.serve.live_calibration`) scaled by ``step_time_scale`` in emulated mode, so its
predictions are in wall-clock seconds like the SLOs.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Sequence
from typing import Any

from dopd.control.calibration import CalibratedLatency
from dopd.control.cluster_config import ClusterConfig
from dopd.control.cluster_models import build_models
from dopd.control.routing.load import InstanceLoad
from dopd.control.routing.router import Router, RouterContext, make_router
from dopd.engine.sequence import Seq
from dopd.engine.waitqueue import ShortFirstQueue, work_ahead
from dopd.perf.base import BatchShape, LatencyModel, StepBreakdown
from dopd.serve.cluster import InstanceHandle
from dopd.serve.serve_config import ServeConfig
from dopd.types import SLO, Role

MIN_SCALE = 1e-3
"""Smallest latency scale a router predicts with: steps that take no time (scale 0) still rank
instances by their work."""

UNKNOWN_BLOCKS = 1 << 30
"""KV blocks assumed before a worker has reported its cache size."""


class ScaledLatency(LatencyModel):
    """``base`` with every step time multiplied by ``scale`` (emulated workers' wall clock).

    Decode coefficients are cached unless ``base`` learns (a
    :class:`~dopd.control.calibration.CalibratedLatency`, whose coefficients move)."""

    __slots__ = ("_coeffs", "base", "kv_capacity_tokens", "name", "scale")

    def __init__(self, base: LatencyModel, scale: float) -> None:
        self._coeffs: dict[int, tuple[float, float]] | None = (
            None if isinstance(base, CalibratedLatency) else {})
        self.base = base
        self.scale = scale
        self.name = f"{base.name} x{scale:g}"
        self.kv_capacity_tokens = base.kv_capacity_tokens

    def step_time(self, prefill_new_tokens: int, prefill_attn_sum: int, prefill_count: int,
                  decode_count: int, decode_ctx_sum: int) -> float:
        return self.scale * self.base.step_time(prefill_new_tokens, prefill_attn_sum,
                                                prefill_count, decode_count, decode_ctx_sum)

    def decode_coefficients(self, decode_count: int) -> tuple[float, float]:
        cache = self._coeffs
        c = None if cache is None else cache.get(decode_count)
        if c is None:
            alpha, slope = self.base.decode_coefficients(decode_count)
            c = (self.scale * alpha, self.scale * slope)
            if cache is not None:
                cache[decode_count] = c
        return c

    def breakdown(self, batch: BatchShape) -> StepBreakdown:
        return self.base.breakdown(batch)


def router_spec(config: ServeConfig, policy_router: str) -> str:
    """The router spec a deployment uses: ``config.router``, or the policy's when ``auto``."""
    return policy_router if config.router == "auto" else config.router


def router_label(router: Router) -> str:
    """``NAME`` or ``NAME:OPTIONS`` of ``router``, as it was asked for."""
    options = router.context.options
    return f"{router.name}:{options}" if options else router.name


def live_router(config: ServeConfig, policy_router: str = "least-loaded",
                kv_blocks: int | None = None, belief: LatencyModel | None = None,
                cluster: ClusterConfig | None = None) -> Router:
    """The router of ``config`` (see the module docstring) for the deployment's instances
    ``cluster`` (None: ``config.cluster_config()``), of ``kv_blocks`` KV blocks each (their
    watermark; None: the simulator's figure for ``perf_model`` on ``gpu``), predicting with
    ``belief`` (the deployment's learned latency model, see
    :mod:`dopd.serve.live_calibration`; None: the configured model) scaled to the wall clock.
    DopdError for a bad spec."""
    sim = config.cluster_config() if cluster is None else cluster
    models = build_models(sim)
    scale = config.step_time_scale if config.mode == "emulated" else 1.0
    scale = max(scale, MIN_SCALE)
    budget = sim.max_batched_tokens
    context = RouterContext(
        latency=ScaledLatency(models.latency if belief is None else belief, scale),
        max_batched_tokens=budget,
        block_size=sim.block_size,
        watermark_blocks=models.watermark_blocks if kv_blocks is None
        else math.ceil(models.watermark * kv_blocks),
        slo=SLO(config.slo_ttft_s, config.slo_tpot_s, config.attainment),
        kv_bytes_per_token=models.kv_bytes_per_token,
        transfer_latency_s=models.transfer_latency_s * scale,
        transfer_bandwidth_Bps=models.transfer_bandwidth_Bps / scale)
    return make_router(router_spec(config, policy_router), context)


@dataclasses.dataclass(slots=True)
class BookBlocks:
    """KV blocks of one instance as a router reads them."""

    num_blocks: int
    used_blocks: int = 0

    @property
    def free_blocks(self) -> int:
        return self.num_blocks - self.used_blocks


class InstanceBook:
    """The front end's account of one instance (a :class:`~dopd.control.routing.load.InstanceLoad`,
    and its own ``sched``). Request states: *waiting* (submitted, no first token yet), *decoding*
    (context tokens known from the output counts), *held* (a prefilled prompt's KV kept for a
    hand-off), *pending* (a hand-off on its way here). Each request is in at most one state on
    one book, except a hand-off, which is held on its source and pending on its target."""

    def __init__(self, handle: InstanceHandle, block_size: int, queue_order: str = "fcfs",
                 aging_s: float = math.inf, max_passes: int = 32) -> None:
        self.handle = handle
        self.instance_id = handle.instance_id
        self.block_size = block_size
        self.blocks = BookBlocks(UNKNOWN_BLOCKS)
        # the worker's queue as the scheduler orders it (one queue model: engine.waitqueue)
        self._queue: deque[Seq] | ShortFirstQueue = (
            ShortFirstQueue(aging_s, max_passes) if queue_order == "short-first" else deque())
        self._waiting: dict[int, Seq] = {}  # rid -> its prompt, queued
        self._decoding: dict[int, int] = {}  # rid -> context tokens
        self._held: dict[int, int] = {}  # rid -> prompt tokens
        self.pending: dict[int, int] = {}  # rid -> prompt tokens
        self._final: dict[int, int] = {}  # rid -> prompt + max_tokens - 1
        self.queued_prefill_tokens = 0
        self.queued_prefill_attn = 0
        self.decode_kv_sum = 0
        self.final_kv_sum = 0
        self.pending_tokens = 0
        self.num_prefilling = 0
        self.num_reserved = 0

    # ------------------------------------------------------------------ what routers read
    @property
    def sched(self) -> InstanceBook:
        return self

    @property
    def role(self) -> Role:
        return self.handle.role

    @property
    def busy(self) -> bool:
        return bool(self._waiting or self._decoding)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_decoding(self) -> int:
        return len(self._decoding)

    @property
    def num_requests(self) -> int:
        return len(self._waiting) + len(self._decoding) + len(self._held)

    def free_at(self, now: float) -> float:
        """When the step in progress is expected to end: half a recent step from now while
        busy (the mean residual of a step), else now."""
        if not self.busy:
            return now
        step = self.handle.stats.recent_step_s
        return now + 0.5 * float(step)

    def prefill_work_ahead(self, prompt_tokens: int) -> tuple[int, int, int]:
        """(tokens, attention sum, prompts) queued here that a new prompt of ``prompt_tokens``
        would wait for, by the scheduler's own queue model
        (:func:`dopd.engine.waitqueue.work_ahead`; aged as of the last :meth:`set_now`)."""
        return work_ahead(self._queue, self.queued_prefill_tokens, self.queued_prefill_attn, 0,
                          prompt_tokens)

    # ------------------------------------------------------------------ transitions
    def set_now(self, now: float) -> None:
        """Age the queue to ``now`` (the clock of the next :meth:`prefill_work_ahead`)."""
        queue = self._queue
        if type(queue) is not deque:
            assert isinstance(queue, ShortFirstQueue)
            queue.age(now)

    def refresh(self) -> None:
        """Take the cache size from the worker's latest stats."""
        total = self.handle.stats.kv_total_blocks
        if total:
            self.blocks.num_blocks = int(total)

    def queue(self, rid: int, prompt_tokens: int, max_tokens: int, now: float) -> None:
        """A prompt submitted here for prefill."""
        self.drop(rid)
        p = prompt_tokens
        seq = Seq(rid, p, max_tokens)
        seq.queued_s = now
        self._waiting[rid] = seq
        self._queue.append(seq)
        self.queued_prefill_tokens += p
        self.queued_prefill_attn += p * p
        self._final[rid] = p + max_tokens - 1
        self.final_kv_sum += p + max_tokens - 1

    def decoding(self, rid: int, context_tokens: int) -> None:
        """``rid`` decodes here with ``context_tokens`` of KV (first token, a KV arrival or a
        later output)."""
        if self._unqueue(rid, started=True) is None:
            self.pending_tokens -= self.pending.pop(rid, 0)
        old = self._decoding.get(rid)
        bs = self.block_size
        if old is not None:
            self.decode_kv_sum += context_tokens - old
            self.blocks.used_blocks += -(-context_tokens // bs) - -(-old // bs)
        else:
            self.decode_kv_sum += context_tokens
            self.blocks.used_blocks += -(-context_tokens // bs)
        self._decoding[rid] = context_tokens

    def held(self, rid: int) -> None:
        """``rid``'s prompt is prefilled here and its KV waits for the hand-off."""
        p = self._unqueue(rid, started=True)
        if p is not None:
            self._held[rid] = p
            self.blocks.used_blocks += -(-p // self.block_size)
            self._forget_final(rid)

    def expect(self, rid: int, prompt_tokens: int, max_tokens: int) -> None:
        """A hand-off of ``prompt_tokens`` tokens of KV is on its way here."""
        self.drop(rid)
        self.pending[rid] = prompt_tokens
        self.pending_tokens += prompt_tokens
        self._final[rid] = prompt_tokens + max_tokens - 1
        self.final_kv_sum += prompt_tokens + max_tokens - 1

    def release(self, rid: int) -> None:
        """The held KV of ``rid`` was handed off (or given up)."""
        p = self._held.pop(rid, None)
        if p is not None:
            self.blocks.used_blocks -= -(-p // self.block_size)

    def drop(self, rid: int) -> None:
        """``rid`` left this instance (finished, aborted, moved on); held KV stays until
        :meth:`release`."""
        self._unqueue(rid)
        ctx = self._decoding.pop(rid, None)
        if ctx is not None:
            self.decode_kv_sum -= ctx
            self.blocks.used_blocks -= -(-ctx // self.block_size)
        self.pending_tokens -= self.pending.pop(rid, 0)
        self._forget_final(rid)

    def clear(self) -> None:
        """The worker is gone (crash): nothing is left on it."""
        for rid in [*self._waiting, *self._decoding, *self.pending]:
            self.drop(rid)
        for rid in list(self._held):
            self.release(rid)

    def _unqueue(self, rid: int, started: bool = False) -> int | None:
        """Take ``rid`` off the queue (``started``: its prefill began, as the scheduler pops
        it; else it was aborted or moved); its prompt tokens, None if it was not queued."""
        seq = self._waiting.pop(rid, None)
        if seq is None:
            return None
        queue = self._queue
        if type(queue) is deque:
            queue.remove(seq)
        else:
            assert isinstance(queue, ShortFirstQueue)
            if started:
                queue.take(seq)
            else:
                queue.remove(seq)
        p = seq.prompt
        self.queued_prefill_tokens -= p
        self.queued_prefill_attn -= p * p
        return p

    def _forget_final(self, rid: int) -> None:
        final = self._final.pop(rid, None)
        if final is not None:
            self.final_kv_sum -= final

    def snapshot(self) -> dict[str, Any]:
        """The book's sums (for ``/v1/cluster`` and tests)."""
        return {"waiting": self.num_waiting, "queued_prefill_tokens": self.queued_prefill_tokens,
                "decoding": self.num_decoding, "decode_ctx_sum": self.decode_kv_sum,
                "held": len(self._held), "pending": len(self.pending),
                "used_blocks": self.blocks.used_blocks}


def routables(books: Sequence[InstanceBook]) -> Sequence[InstanceLoad]:
    """``books`` as the routers' candidate type (an :class:`InstanceBook` is an
    :class:`~dopd.control.routing.load.InstanceLoad`)."""
    return books
