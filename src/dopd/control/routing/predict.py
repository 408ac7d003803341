"""Latency and KV predictions for placing one request on one instance, from the latency model.

Every function reads an instance through :class:`dopd.control.routing.load.InstanceLoad` (the engine
scheduler's O(1) running sums, plus one bisection over a short-first queue), so a router can
evaluate each candidate for each request. Terms: ``budget`` is the step token budget; ``b`` and
``kv`` the instance's decode batch and its context sum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dopd.control.routing.context import RouterContext
from dopd.control.routing.load import InstanceLoad
from dopd.perf.base import LatencyModel
from dopd.types import Role


def decode_step_s(latency: LatencyModel, inst: InstanceLoad, prompt_tokens: int) -> float:
    """Predicted decode-only step time of ``inst`` once a new request of ``prompt_tokens``
    tokens of KV, the reserved ones and the queued hand-offs have joined its batch:
    ``alpha(batch) + slope(batch) * context`` (the latency model, the calibrated belief, caches
    its coefficients and moves them as it learns). The one decode step formula of the
    routers."""
    s = inst.sched
    c = latency.decode_coefficients(s.num_decoding + s.num_reserved + len(inst.pending) + 1)
    return c[0] + c[1] * (s.decode_kv_sum + inst.pending_tokens + prompt_tokens)


def batch_step_s(latency: LatencyModel, inst: InstanceLoad) -> float:
    """Predicted decode-only step time of ``inst``'s running batch as it is (0 when none)."""
    s = inst.sched
    b = s.num_decoding
    if not b:
        return 0.0
    c = latency.decode_coefficients(b)
    return c[0] + c[1] * s.decode_kv_sum


def drain_s(latency: LatencyModel, budget: int, tokens: int, attn: float, count: int, b: int,
            kv: int) -> float:
    """Predicted seconds to prefill ``tokens`` queued prompt tokens (attention sum ``attn``,
    ``count`` prompts) next to a batch of ``b`` decodes of context sum ``kv``, in steps of
    ``budget - b`` prompt tokens (decodes go first, as the scheduler does). The work is spread
    evenly over the steps, which is exact for step times affine in the running sums."""
    if tokens <= 0:
        return 0.0
    per_step = budget - b if budget > b else 1
    steps = -(-tokens // per_step)
    if steps == 1:
        return latency.step_time(tokens, int(attn), count, b, kv)
    # Fractional per-step sums keep the causal-attention correction of the aggregate exact.
    return steps * latency.step_time(tokens / steps, attn / steps, count / steps, b, kv)  # type: ignore[arg-type]


def prefill_done_s(context: RouterContext, now: float, inst: InstanceLoad, prompt_tokens: int,
                   whole_queue: bool = False) -> float:
    """Predicted seconds from ``now`` until ``inst`` has prefilled a new prompt of
    ``prompt_tokens`` tokens: the step in progress, then the steps that prefill the work queued
    ahead of the prompt in the instance's queue order and the prompt itself; work queued behind
    it fills the budget of the last of those steps. ``whole_queue``: as if it were queued
    behind all the queued work (the time to drain the instance with it)."""
    s = inst.sched
    p = prompt_tokens
    if whole_queue:
        tokens, attn = s.queued_prefill_tokens, s.queued_prefill_attn
        count = s.num_waiting + s.num_prefilling
    else:
        tokens, attn, count = s.prefill_work_ahead(p)
    tokens += p
    attn += p * p
    count += 1
    total = s.queued_prefill_tokens + p
    b = s.num_decoding
    budget = context.max_batched_tokens
    if total > tokens:
        per_step = budget - b if budget > b else 1
        filled = min(total, -(-tokens // per_step) * per_step)
        if filled > tokens:
            share = (filled - tokens) / (total - tokens)
            attn += (s.queued_prefill_attn + p * p - attn) * share
            count += round((s.num_waiting + s.num_prefilling + 1 - count) * share)
            tokens = filled
    return inst.free_at(now) - now + drain_s(context.latency, budget, tokens, attn, count, b,
                                             s.decode_kv_sum)


def ttft_s(context: RouterContext, now: float, inst: InstanceLoad, prompt_tokens: int,
           decode_wait_s: float = 0.0, whole_queue: bool = False) -> float:
    """Predicted TTFT of a new prompt prefilled on ``inst``: :func:`prefill_done_s`; on a
    prefill-only instance, at least ``decode_wait_s`` (the predicted wait for decode memory,
    :meth:`DecodeModel.handoff_wait_s`), plus the KV hand-off on an idle link."""
    t = prefill_done_s(context, now, inst, prompt_tokens, whole_queue)
    if inst.sched.role == Role.PREFILL:
        t = (t if t > decode_wait_s else decode_wait_s) + context.transfer_s(prompt_tokens)
    return t


def request_cost_s(context: RouterContext, prompt_tokens: int) -> float:
    """Seconds an idle instance takes to prefill a prompt of ``prompt_tokens`` tokens."""
    return drain_s(context.latency, context.max_batched_tokens, prompt_tokens,
                   prompt_tokens * prompt_tokens, 1, 0, 0)


class DecodeModel:
    """Decode-side predictions of one router: step time after admission, lifetime KV fit, and
    the step a bypassed prompt would share with the decodes. No coefficient cache: the
    latency model (the calibrated belief) caches its own and moves them as it learns."""

    __slots__ = ("context",)

    def __init__(self, context: RouterContext) -> None:
        self.context = context

    def step_after(self, inst: InstanceLoad, prompt_tokens: int) -> float:
        """Predicted decode-only step time of ``inst`` once this request, the reserved ones and
        the queued hand-offs have joined its batch."""
        return decode_step_s(self.context.latency, inst, prompt_tokens)

    def lifetime_headroom(self, inst: InstanceLoad, pending_osl: float) -> float:
        """KV blocks of ``inst`` left once every request placed on it (the queued hand-offs
        with ``pending_osl`` output tokens each) is at its last decode step, with one block per
        request for rounding and the watermark kept (negative: over-committed)."""
        s = inst.sched
        pending = len(inst.pending)
        tokens = s.final_kv_sum + inst.pending_tokens + pending * pending_osl
        used = tokens / self.context.block_size + s.num_requests + pending
        return s.blocks.num_blocks - self.context.watermark_blocks - used

    def lifetime_fits(self, inst: InstanceLoad, prompt_tokens: int, output_tokens: int,
                      pending_osl: float) -> bool:
        """Whether :meth:`lifetime_headroom` holds a new request's whole life: its prompt and
        ``output_tokens`` (its expected output) of KV."""
        need = (prompt_tokens + output_tokens - 1) / self.context.block_size + 1
        return self.lifetime_headroom(inst, pending_osl) >= need

    def handoff_wait_s(self, prefill: Sequence[InstanceLoad], decode: Sequence[InstanceLoad],
                       mean_prompt: float, mean_osl: float) -> float:
        """Predicted wait for decode memory of a prompt placed now on a prefill-only instance.

        The hand-offs ahead of it are those queued for decode memory and the prompts queued or
        in progress on the prefill-only instances. The decode-only instances' free KV now takes
        ``free / (mean_prompt + 1)`` of them at once; the rest are admitted as running decodes
        finish, at ``sum B / (mean_osl * step time)`` per second (Little's law per batch ``B``).
        0 when there is no decode-only instance."""
        bs = self.context.block_size
        floor = self.context.watermark_blocks
        ahead = 1
        for inst in prefill:
            s = inst.sched
            if s.role == Role.PREFILL:
                ahead += s.num_waiting + s.num_prefilling
        room = 0
        decoders = []
        for inst in decode:
            s = inst.sched
            if s.role == Role.DECODE:
                decoders.append(inst)
                ahead += len(inst.pending)
                free = s.blocks.free_blocks - -(-inst.pending_tokens // bs) - floor
                if free > 0:
                    room += free * bs
        if not decoders:
            return 0.0
        left = ahead - room / (mean_prompt + 1)
        if left <= 0:
            return 0.0
        rate = 0.0
        latency = self.context.latency
        for inst in decoders:
            b = inst.sched.num_decoding
            if b:
                rate += b / (mean_osl * batch_step_s(latency, inst))
        return left / rate if rate > 0 else math.inf

    def headroom_blocks(self, inst: InstanceLoad) -> int:
        """Free KV blocks of ``inst`` once its queued hand-offs have their prompts' blocks."""
        return inst.sched.blocks.free_blocks - -(-inst.pending_tokens // self.context.block_size)

    def bypass_step(self, inst: InstanceLoad, prompt_tokens: int) -> float:
        """Predicted time of the step that would carry a bypassed prompt on decode instance
        ``inst`` (its decodes, its queued prompts and this one); ``inf`` when that does not fit
        one step's token budget."""
        s = inst.sched
        b = s.num_decoding
        tokens = s.queued_prefill_tokens + prompt_tokens
        if tokens + b > self.context.max_batched_tokens:
            return math.inf
        return self.context.latency.step_time(
            tokens, s.queued_prefill_attn + prompt_tokens * prompt_tokens,
            s.num_waiting + s.num_prefilling + 1, b, s.decode_kv_sum)
