"""Request routing policies: which instance prefills a request, which one decodes it.

A router is built by a factory in :data:`ROUTERS` from a :class:`RouterContext` and answers two
questions, each over a non-empty list of candidate instances that accept that kind of work:

- :meth:`Router.select_prefill` at arrival;
- :meth:`Router.select_decode` when a prompt completes on a prefill-only instance (the decode
  side is chosen then, with the freshest load, rather than at arrival).

Routers read instance signals through the
:class:`~dopd.control.routing.load.InstanceLoad` protocol only (running sums kept by the engine's
scheduler or the live front end's instance book, O(1) each), so routing costs O(candidates) per
request.

A router may also take over the whole arrival decision with :meth:`Router.place` (which
prefill instance, or prefill on a decode instance, or reject the request: a :class:`Placement`),
and set the instances' queue order with :meth:`Router.scheduler_config`; the simulator calls
``place`` only when a router overrides it.

Routers are built from a spec ``NAME`` or ``NAME:KEY=VALUE,...`` by :func:`make_router`; the
options reach the factory as :attr:`RouterContext.options` (routers without options refuse
them).

Built-in routers: ``round-robin``; ``least-loaded`` (prefill: smallest predicted time until the
new prompt is prefilled, from the latency model over the queued prefill work; decode: smallest
predicted decode step time after admission); ``pd-pair`` (prefill as ``least-loaded``; decode:
instances whose free KV holds the request first, then the smallest predicted step time, else the
most KV headroom); ``length-aware`` (:mod:`dopd.control.routing`: predicted-TTFT placement,
short-first queues with aging, a long-prompt lane, KV-footprint decode placement, short-prompt
bypass and admission control, each behind an option).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dopd.control.routing.context import RouterContext
from dopd.control.routing.load import InstanceLoad
from dopd.control.routing.predict import decode_step_s
from dopd.engine.sequence import SchedulerConfig
from dopd.errors import require
from dopd.registry import Registry

Routable = InstanceLoad
"""The former name of :class:`~dopd.control.routing.load.InstanceLoad`."""


@dataclass(frozen=True, slots=True)
class Placement:
    """A router's decision at arrival: prefill on ``instance`` (a decode instance when
    ``bypass``: it prefills and decodes there, with no KV hand-off), or, when ``reject`` is not
    empty, refuse the request for that reason (``instance`` is then None).
    ``predicted_ttft_s``: the TTFT the router predicted there (NaN: none), for the decision
    log's prediction errors."""

    instance: InstanceLoad | None
    bypass: bool = False
    reject: str = ""
    predicted_ttft_s: float = math.nan


class Router:
    """Base router: subclasses implement both selections. ``accepts_options`` says whether the
    router takes ``NAME:KEY=VALUE`` options."""

    name = "router"
    accepts_options = False

    def __init__(self, context: RouterContext) -> None:
        require(self.accepts_options or not context.options,
                f"router {self.name} takes no options, got {context.options!r}")
        self.context = context

    def scheduler_config(self, base: SchedulerConfig) -> SchedulerConfig:
        """The scheduler settings the instances should use, given the run's (unchanged here)."""
        return base

    def place(self, now: float, prompt_tokens: int, output_tokens: int,
              prefill: Sequence[InstanceLoad], decode: Sequence[InstanceLoad],
              admit: bool) -> Placement:
        """Where a new request goes; ``prefill`` is non-empty, ``decode`` lists the instances
        that accept decode work (maybe empty). ``admit`` is True at arrival (the request may be
        rejected) and False for a request being re-routed. Default: :meth:`select_prefill`."""
        return Placement(self.select_prefill(now, prompt_tokens, output_tokens, prefill))

    def select_prefill(self, now: float, prompt_tokens: int, output_tokens: int,
                       candidates: Sequence[InstanceLoad]) -> InstanceLoad:
        raise NotImplementedError

    def observe_finish(self, now: float, prompt_tokens: int, output_tokens: int) -> None:
        """A request finished with ``output_tokens`` generated: the only time a live router
        learns an output length. Default: ignored."""

    def select_decode(self, now: float, prompt_tokens: int, output_tokens: int,
                      candidates: Sequence[InstanceLoad]) -> InstanceLoad:
        raise NotImplementedError


ROUTERS: Registry[Callable[[RouterContext], Router]] = Registry("router")
"""Factories by router name. Use :func:`load_routers` before listing it."""

ROUTER_MODULES: tuple[str, ...] = (
    "dopd.control.routing.router",
    "dopd.control.routing.length_aware",
)
"""Modules that register their routers in :data:`ROUTERS` when imported; a new router module is
added here (as a policy module is added to ``POLICY_MODULES``)."""


def load_routers() -> Registry[Callable[[RouterContext], Router]]:
    """Import every module of :data:`ROUTER_MODULES` (cheap after the first call); returns
    :data:`ROUTERS`."""
    for name in ROUTER_MODULES:
        importlib.import_module(name)
    return ROUTERS


def make_router(spec: str, context: RouterContext) -> Router:
    """The router named by ``spec`` (``NAME`` or ``NAME:KEY=VALUE,...``); DopdError if the name
    is unknown or the options are bad."""
    require(isinstance(spec, str) and spec.strip() != "", "router spec is empty")
    load_routers()
    name, _, options = spec.strip().partition(":")
    return ROUTERS.get(name)(dataclasses.replace(context, options=options.strip()))


@ROUTERS.decorator("round-robin")
class RoundRobin(Router):
    """Cycles through the candidates, separately for prefill and decode."""

    name = "round-robin"

    def __init__(self, context: RouterContext) -> None:
        super().__init__(context)
        self._prefill = 0
        self._decode = 0

    def select_prefill(self, now: float, prompt_tokens: int, output_tokens: int,
                       candidates: Sequence[InstanceLoad]) -> InstanceLoad:
        self._prefill += 1
        return candidates[self._prefill % len(candidates)]

    def select_decode(self, now: float, prompt_tokens: int, output_tokens: int,
                      candidates: Sequence[InstanceLoad]) -> InstanceLoad:
        self._decode += 1
        return candidates[self._decode % len(candidates)]


@ROUTERS.decorator("least-loaded")
class LeastLoaded(Router):
    """Smallest predicted work: prefill by predicted time to finish the queued prompts plus the
    new one; decode by predicted decode step time with the request added."""

    name = "least-loaded"

    def prefill_wait(self, now: float, inst: InstanceLoad, prompt_tokens: int) -> float:
        """Predicted seconds until ``prompt_tokens`` more prompt tokens queued on ``inst`` are
        prefilled (current step, then the queue in budget-sized steps with its decodes)."""
        s = inst.sched
        tokens = s.queued_prefill_tokens + prompt_tokens
        attn = s.queued_prefill_attn + prompt_tokens * prompt_tokens
        count = s.num_waiting + s.num_prefilling + 1
        b, kv = s.num_decoding, s.decode_kv_sum
        step_time = self.context.latency.step_time
        t = inst.free_at(now) - now + step_time(tokens, attn, count, b, kv)
        steps = -(-tokens // self.context.max_batched_tokens)
        if steps > 1 and b:
            t += (steps - 1) * step_time(0, 0, 0, b, kv)
        return t

    def decode_step(self, inst: InstanceLoad, prompt_tokens: int) -> float:
        """Predicted decode step time of ``inst`` once the request and its queue are admitted."""
        return decode_step_s(self.context.latency, inst, prompt_tokens)

    def select_prefill(self, now: float, prompt_tokens: int, output_tokens: int,
                       candidates: Sequence[InstanceLoad]) -> InstanceLoad:
        # prefill_wait() inlined: this runs for every request and candidate.
        step_time = self.context.latency.step_time
        budget = self.context.max_batched_tokens
        square = prompt_tokens * prompt_tokens
        best = candidates[0]
        best_t = math.inf
        for inst in candidates:
            s = inst.sched
            b = s.num_decoding
            if not (inst.busy or b or s.queued_prefill_tokens):
                return inst  # idle and empty: nobody can do better
            tokens = s.queued_prefill_tokens + prompt_tokens
            t = inst.free_at(now) - now + step_time(
                tokens, s.queued_prefill_attn + square, s.num_waiting + s.num_prefilling + 1,
                b, s.decode_kv_sum)
            if b and tokens > budget:
                t += (-(-tokens // budget) - 1) * step_time(0, 0, 0, b, s.decode_kv_sum)
            if t < best_t:
                best, best_t = inst, t
        return best

    def select_decode(self, now: float, prompt_tokens: int, output_tokens: int,
                      candidates: Sequence[InstanceLoad]) -> InstanceLoad:
        best = candidates[0]
        best_t = math.inf
        for inst in candidates:
            t = self.decode_step(inst, prompt_tokens)
            if t < best_t:
                best, best_t = inst, t
        return best


@ROUTERS.decorator("pd-pair")
class PDPair(LeastLoaded):
    """Prefill like ``least-loaded``; decode on an instance whose free KV (after the hand-offs
    already queued there) holds the request, least predicted step time first; when none has
    room, the one with the most KV headroom."""

    name = "pd-pair"

    def select_decode(self, now: float, prompt_tokens: int, output_tokens: int,
                      candidates: Sequence[InstanceLoad]) -> InstanceLoad:
        bs = self.context.block_size
        floor = self.context.watermark_blocks + -(-(prompt_tokens + 1) // bs)
        best = None
        best_t = math.inf
        roomiest = candidates[0]
        most = -math.inf
        latency = self.context.latency
        for inst in candidates:
            headroom = inst.sched.blocks.free_blocks - -(-inst.pending_tokens // bs)
            if headroom >= floor:
                t = decode_step_s(latency, inst, prompt_tokens)
                if t < best_t:
                    best, best_t = inst, t
            elif best is None and headroom > most:
                roomiest, most = inst, headroom
        return best if best is not None else roomiest
