"""``length-aware``: DOPD's request scheduling (DESIGN.md, "Request scheduling (length-aware)").

At arrival (:meth:`LengthAwareRouter.place`), in this order:

1. Long-prompt lane: while recent prompt lengths are heavy-tailed, long prompts may only use the
   lane's prefill instances (the last ones of the candidate list), so the others never have a
   long prompt in progress for a short one to wait behind; short prompts may use any instance
   (:mod:`dopd.control.routing.lanes`; a strict split of both ways measured worse: it loses
   pooling). A long prompt spills over to the others only when that rescues it: its best
   predicted TTFT in the lane is hopeless (above ``admit_k`` x the SLO) and outside it is not.
2. Prefill placement: the candidate that is predicted to drain its queue with the prompt added
   soonest (:func:`~dopd.control.routing.predict.ttft_s`: the step in progress, the queued work
   in budget-sized steps next to the instance's decodes, the prompt and its KV hand-off). The
   prompt's own predicted TTFT there (only the work ahead of it in the queue order, and the
   wait for decode memory) decides bypass and admission.
3. Bypass: a prompt prefills on a decode instance when it fits that instance's next step, that
   is predicted to give an earlier first token, the step carrying it and the decode step after
   it stay within the TPOT SLO, and its whole-life KV fits there (``bypass_tokens`` can limit
   it to short prompts).
4. Admission control: a request whose best predicted TTFT (bypassed or not) exceeds ``admit_k``
   x the TTFT SLO is rejected at once when it would miss that even on an idle instance (by
   ``idle_margin``), or when no instance of the pool is idle (it would miss the SLO anyway, and
   serving it would delay the others); while one is idle, it goes there instead (a decode
   instance prefills it in place): admission never turns away what idle capacity can serve.

Within an instance, prompts wait shortest first with aging (:meth:`scheduler_config`; see
:mod:`dopd.engine.waitqueue` for the starvation bound). Decode placement
(:meth:`select_decode`), over the decode instances with free KV for the prompt now (after the
hand-offs queued there): those whose KV also holds every request placed there and this one at
their last step (ISL + expected OSL, the running mean output length of finished
requests) first, by the smallest
predicted step time after admission; else the one with the most KV left at that horizon. When
no instance has room for the prompt now, ``pd-pair``'s choice (the most headroom): the hand-off
waits there for memory; an instance reserves KV only for what fits now.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from dopd.control.routing.lanes import LengthWindow
from dopd.control.routing.options import LengthAwareOptions, parse_options
from dopd.control.routing.predict import DecodeModel, prefill_done_s, request_cost_s, ttft_s
from dopd.control.routing.router import ROUTERS, InstanceLoad, PDPair, Placement, RouterContext
from dopd.engine.sequence import SchedulerConfig
from dopd.errors import require
from dopd.types import Role

AGING_SLOS = 5.0
"""Default aging bound of the short-first queue, in TTFT SLOs."""

DEFAULT_AGING_S = 10.0
"""Default aging bound of the short-first queue when the run has no SLO."""

_EWMA = 1 / 256  # weight of the newest arrival in the mean prompt length
_EWMA_OSL = 1 / 64  # weight of the newest finished request in the mean output length

_EWMA_BACKLOG = 1 / 64  # weight of the newest arrival in the smoothed prefill backlog

LIGHT_BACKLOG = 0.5
"""The pool is lightly loaded while its smoothed prefill backlog (per prefill instance, at
arrivals) stays below this share of the TTFT SLO: a burst then passes, and admission control
may admit up to ``pool_k`` x its limit; under a sustained backlog it admits only up to the
limit, since admitting late requests there makes the others late too (a cliff: ``pool_k``
1.5 at every load cut dopd's attainment from 75 % to 15 % on Azure conv at 20x)."""

OSL_PRIOR = 256
"""Expected output length (tokens) before any request has finished."""


@ROUTERS.decorator("length-aware")
class LengthAwareRouter(PDPair):
    """The ``length-aware`` router (see the module docstring); options from the spec text,
    :class:`~dopd.control.routing.options.LengthAwareOptions`. Bypass and admission control
    need the run's SLO (DopdError without one, unless both are off)."""

    name = "length-aware"
    accepts_options = True

    def __init__(self, context: RouterContext) -> None:
        super().__init__(context)
        self.options: LengthAwareOptions = parse_options(context.options)
        opts = self.options
        require(context.slo is not None or not opts.needs_slo,
                "router length-aware needs an SLO for bypass and admission control "
                "(give one, or turn them off with bypass=off,admit=off)")
        self.window = LengthWindow(opts.lane_window, opts.lane_quantile, opts.lane_ratio)
        self.decode_model = DecodeModel(context)
        slo = context.slo
        self._ttft_limit = opts.admit_k * slo.ttft_s if slo is not None else math.inf
        self._tpot = slo.tpot_s if slo is not None else math.inf
        self._mean_prompt = 0.0
        self._mean_osl = float(OSL_PRIOR)
        self._seen = 0
        self._finished = 0
        self._backlog = 0.0
        self.rejected = 0
        self.rescued = 0
        self.bypassed = 0

    # ------------------------------------------------------------------ engine settings
    def scheduler_config(self, base: SchedulerConfig) -> SchedulerConfig:
        opts = self.options
        if opts.order == "fcfs":
            return base
        aging = opts.aging_s
        if aging is None:
            slo = self.context.slo
            aging = AGING_SLOS * slo.ttft_s if slo is not None else DEFAULT_AGING_S
        return dataclasses.replace(base, queue_order="short-first", aging_s=aging,
                                   max_passes=opts.max_passes)

    # ------------------------------------------------------------------ arrival
    def place(self, now: float, prompt_tokens: int, output_tokens: int,
              prefill: Sequence[InstanceLoad], decode: Sequence[InstanceLoad],
              admit: bool) -> Placement:
        opts = self.options
        p = prompt_tokens
        if admit:
            if self._seen:
                self._mean_prompt += _EWMA * (p - self._mean_prompt)
            else:
                self._mean_prompt = float(p)
            self._seen += 1
            if opts.admit and opts.pool_k is not None:
                self._backlog += _EWMA_BACKLOG * (self._backlog_s(now, prefill) - self._backlog)
            if opts.lane:
                self.window.observe(p, request_cost_s(self.context, p))
        candidates = prefill
        lane = self.window.lanes(len(prefill)) if opts.lane else 0
        long = lane > 0 and self.window.is_long(p)
        if long:
            candidates = prefill[-lane:]
        wait = self.decode_model.handoff_wait_s(prefill, decode, self._mean_prompt,
                                                self._mean_osl)
        best, best_t = self._best_prefill(now, p, output_tokens, candidates, wait)
        if long and best_t > self._ttft_limit:
            other, other_t = self._best_prefill(now, p, output_tokens, prefill[:-lane], wait)
            if other_t <= self._ttft_limit:
                best, best_t = other, other_t
        bypass: InstanceLoad | None = None
        if opts.bypass and (opts.bypass_tokens is None or p <= opts.bypass_tokens) and decode:
            inst, t = self._best_bypass(now, p, output_tokens, decode)
            if inst is not None and t < best_t:
                bypass, best_t = inst, t
        if admit and opts.admit and best_t > self._ttft_limit:
            verdict = self._admission(now, p, best_t, prefill, decode)
            if isinstance(verdict, str):
                self.rejected += 1
                return Placement(None, reject=verdict, predicted_ttft_s=best_t)
            self.rescued += 1
            if verdict is not None:
                inst, t = verdict
                if inst.sched.role == Role.DECODE:
                    self.bypassed += 1
                    return Placement(inst, bypass=True, predicted_ttft_s=t)
                return Placement(inst, predicted_ttft_s=t)
        if bypass is not None:
            self.bypassed += 1
            return Placement(bypass, bypass=True, predicted_ttft_s=best_t)
        return Placement(best, predicted_ttft_s=best_t)

    def idle_ttft_s(self, prompt_tokens: int) -> float:
        """Predicted TTFT of a prompt on an idle instance of the pool: its prefill alone, plus
        the KV hand-off when every instance that could take it hands off (prefill-only)."""
        return request_cost_s(self.context, prompt_tokens)

    def _backlog_s(self, now: float, prefill: Sequence[InstanceLoad]) -> float:
        """The prefill instances' backlog shared evenly over them (seconds)."""
        total = sum(prefill_done_s(self.context, now, inst, 0, whole_queue=True)
                    for inst in prefill)
        return total / max(len(prefill), 1)

    def _admission(self, now: float, prompt_tokens: int, best_t: float,
                   prefill: Sequence[InstanceLoad], decode: Sequence[InstanceLoad]
                   ) -> str | tuple[InstanceLoad, float] | None:
        """A request whose best placement misses the TTFT limit: the rejection reason, or an
        idle instance of the pool that can still serve it in time (and its predicted TTFT).

        Rejected are only (a) requests that miss ``admit_k`` x the SLO by ``idle_margin`` even
        on an idle instance (they cannot make it) and (b) requests that could make it on an
        idle instance while no instance of the pool (prefill, decode or mixed) is idle (and,
        with ``pool_k`` set, the prefill instances' whole backlog shared evenly over them would
        still make it later than that limit, ``pool_k`` x it while the pool is lightly loaded,
        see :data:`LIGHT_BACKLOG`): the cluster is congested, and serving them would delay the
        others. While an instance is idle, such a request goes there (a decode instance
        prefills it in place);
        while only the placement is congested, not the pool, it is admitted where placed
        (None)."""
        opts = self.options
        slo = self.context.slo
        assert slo is not None
        idle_t = self.idle_ttft_s(prompt_tokens)
        if idle_t > self._ttft_limit * (1.0 + opts.idle_margin):
            return (f"admission control: predicted TTFT {idle_t:.2f} s even on an idle "
                    f"instance > {opts.admit_k:g} x TTFT SLO {slo.ttft_s:g} s")
        spare: tuple[InstanceLoad, float] | None = None
        for inst in (*prefill, *decode):
            if not _idle(inst):
                continue
            t = ttft_s(self.context, now, inst, prompt_tokens)
            if spare is None or t < spare[1]:
                spare = (inst, t)
        if spare is not None:
            return spare
        if opts.pool_k is None:
            return (f"admission control: predicted TTFT {best_t:.2f} s > {opts.admit_k:g} x "
                    f"TTFT SLO {slo.ttft_s:g} s and no idle instance")
        pooled = self._backlog_s(now, prefill) + idle_t
        light = self._backlog < LIGHT_BACKLOG * slo.ttft_s
        if pooled <= self._ttft_limit * (opts.pool_k if light else 1.0):
            return None
        return (f"admission control: predicted TTFT {best_t:.2f} s > {opts.admit_k:g} x TTFT "
                f"SLO {slo.ttft_s:g} s, and {pooled:.2f} s with the pool's backlog shared")

    @property
    def expected_output_tokens(self) -> float:
        """The output length the router plans decode memory with (learned, never the
        arriving request's own)."""
        return self._mean_osl

    def observe_finish(self, now: float, prompt_tokens: int, output_tokens: int) -> None:
        """Learn the mean output length from finished requests (the prior until the first)."""
        if self._finished:
            self._mean_osl += _EWMA_OSL * (output_tokens - self._mean_osl)
        else:
            self._mean_osl = float(output_tokens)
        self._finished += 1

    def select_prefill(self, now: float, prompt_tokens: int, output_tokens: int,
                       candidates: Sequence[InstanceLoad]) -> InstanceLoad:
        """Prefill placement alone (no lane, bypass or admission): the :meth:`place` rule."""
        return self._best_prefill(now, prompt_tokens, output_tokens, candidates)[0]

    def _best_prefill(self, now: float, prompt_tokens: int, output_tokens: int,
                      candidates: Sequence[InstanceLoad], decode_wait_s: float = 0.0
                      ) -> tuple[InstanceLoad, float]:
        """The candidate that would drain its queue soonest with the prompt added
        (``least-loaded``'s choice when the ``ttft`` option is off), and the prompt's own
        predicted TTFT there (in the instance's queue order, with the wait for decode memory).

        Ranking by the prompt's own TTFT instead would send short prompts to long short-first
        queues they can jump, delaying those queues' long prompts: it measured worse. The wait
        for decode memory is the same for every prefill-only candidate, so it is left out of
        the ranking."""
        context = self.context
        if not self.options.ttft:
            best = super().select_prefill(now, prompt_tokens, output_tokens, candidates)
        else:
            best = candidates[0]
            best_drain = math.inf
            for inst in candidates:
                t = ttft_s(context, now, inst, prompt_tokens, whole_queue=True)
                if t < best_drain:
                    best, best_drain = inst, t
        return best, ttft_s(context, now, best, prompt_tokens, decode_wait_s)

    def _best_bypass(self, now: float, prompt_tokens: int, output_tokens: int,
                     decode: Sequence[InstanceLoad]) -> tuple[InstanceLoad | None, float]:
        """The decode instance that would give the bypassed prompt its first token soonest
        while keeping its decodes within the TPOT SLO and the KV within memory, and that time
        (None, inf when none qualifies)."""
        model = self.decode_model
        tpot = self._tpot
        osl = self._mean_osl
        expected_osl = max(1, round(osl))  # a live router cannot know this request's own OSL
        best: InstanceLoad | None = None
        best_t = math.inf
        for inst in decode:
            if inst.sched.role != Role.DECODE:
                continue
            step = model.bypass_step(inst, prompt_tokens)
            if step > tpot or model.step_after(inst, prompt_tokens) > tpot:
                continue
            if not model.lifetime_fits(inst, prompt_tokens, expected_osl, osl):
                continue
            t = inst.free_at(now) - now + step
            if t < best_t:
                best, best_t = inst, t
        return best, best_t

    # ------------------------------------------------------------------ decode
    def select_decode(self, now: float, prompt_tokens: int, output_tokens: int,
                      candidates: Sequence[InstanceLoad]) -> InstanceLoad:
        if not self.options.decode:
            return super().select_decode(now, prompt_tokens, output_tokens, candidates)
        model = self.decode_model
        osl = self._mean_osl
        expected_osl = max(1, round(osl))  # a live router cannot know this request's own OSL
        floor = self.context.watermark_blocks + -(-(prompt_tokens + 1) // self.context.block_size)
        best: InstanceLoad | None = None
        best_t = math.inf
        roomiest: InstanceLoad | None = None
        most = -math.inf
        for inst in candidates:
            if model.headroom_blocks(inst) < floor:
                continue  # no room for the prompt now
            if model.lifetime_fits(inst, prompt_tokens, expected_osl, osl):
                t = model.step_after(inst, prompt_tokens)
                if t < best_t:
                    best, best_t = inst, t
            elif best is None:
                left = model.lifetime_headroom(inst, osl)
                if left > most:
                    roomiest, most = inst, left
        if best is not None:
            return best
        if roomiest is not None:
            return roomiest
        return super().select_decode(now, prompt_tokens, output_tokens, candidates)


def _idle(inst: InstanceLoad) -> bool:
    """Whether ``inst``'s compute is idle: no step running, nothing queued, no decodes running
    or reserved, no hand-off waiting for its memory."""
    s = inst.sched
    return not inst.busy and not inst.pending and s.num_waiting == 0 \
        and s.num_prefilling == 0 and s.num_decoding == 0 and s.num_reserved == 0
