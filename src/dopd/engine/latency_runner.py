"""Runners execute a :class:`~dopd.engine.plan.StepPlan`; here the latency-model runner.

A runner is anything with ``execute(plan) -> StepResult``. :class:`LatencyModelRunner` predicts
the step's duration with a ``dopd.perf`` latency model: the simulator advances its clock by that
duration (tokens are 0); the emulated workers of ``dopd serve --mode emulated`` run the same
runner with a :class:`WallClock` that waits the duration (times a scale) on the wall clock and
a :class:`TokenSource` that makes their tokens. It also times the simulator's multi-step decode
runs in closed form.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from dopd.engine.plan import DecodeRun, FinishReason, StepPlan, StepResult
from dopd.errors import require


class StepRunner(Protocol):
    """Executes one step plan."""

    def execute(self, plan: StepPlan) -> StepResult: ...


class StepTimeModel(Protocol):
    """The part of ``dopd.perf.base.LatencyModel`` that the engine uses."""

    def step_time(self, prefill_new_tokens: int, prefill_attn_sum: int, prefill_count: int,
                  decode_count: int, decode_ctx_sum: int) -> float: ...

    def decode_run_time(self, decode_count: int, ctx_sum_start: int, steps: int) -> float: ...

    def decode_coefficients(self, decode_count: int) -> tuple[float, float]: ...

    def decode_steps_within(self, decode_count: int, ctx_sum_start: int,
                            time_budget: float) -> int: ...


SampledTokens = tuple[tuple[int, ...], tuple[tuple[int, "FinishReason"], ...]]
"""(one token per sampling request of a plan, the requests that stop on theirs)."""


class TokenSource(Protocol):
    """Makes the tokens of a step that no model computes (emulated workers)."""

    def sample(self, plan: StepPlan) -> SampledTokens:
        """(one token per ``plan.sampling_ids``, the requests that stop on theirs)."""
        ...


Waiter = Callable[[float], None]
"""``wait(deadline)``: return at ``time.perf_counter()`` >= deadline, doing background work."""


class WallClock:
    """Lets a latency-model runner's steps take their time on the wall clock: ``scale`` times
    the predicted duration (0: no time).

    ``wait``, when set, replaces the sleep: a worker uses it to serve KV transfers while a step
    is "on the GPU" (a transfer does not wait for the sender's compute). The worker sets
    ``back_to_back`` when this step follows the previous one without idling: the step then
    counts from the previous step's end, so the worker's own time between steps (scheduling,
    sending outputs) is part of the modeled step time, as the engine overhead is on a GPU,
    instead of being added to it."""

    __slots__ = ("_end", "back_to_back", "scale", "wait")

    def __init__(self, scale: float = 1.0) -> None:
        require(scale >= 0, f"step time scale must be >= 0, got {scale}")
        self.scale = scale
        self.wait: Waiter | None = None
        self.back_to_back = False
        self._end: float | None = None

    def start(self) -> float:
        """The step's start (``time.perf_counter`` seconds)."""
        start = time.perf_counter()
        if self.back_to_back and self._end is not None and self._end < start:
            start = self._end
        return start

    def finish(self, start: float, predicted_s: float) -> float:
        """Wait until ``start`` + ``scale`` x ``predicted_s``; the step's wall seconds."""
        duration = self.scale * predicted_s
        if self.wait is not None:
            self.wait(start + duration)
        else:
            left = duration - (time.perf_counter() - start)
            if left > 0:
                time.sleep(left)
        self._end = time.perf_counter()
        return max(duration, self._end - start)


class LatencyModelRunner:
    """Times steps with a latency model.

    Without ``clock`` and ``tokens`` (the simulator) a step returns at once with its predicted
    duration and token id 0 for every sampling request. With a :class:`WallClock` it takes
    that time on the wall clock and reports the wall time; ``tokens`` makes the tokens (and
    stops) of the requests (the emulated workers)."""

    __slots__ = ("_coeffs", "_zeros", "clock", "model", "tokens")

    def __init__(self, model: StepTimeModel, tokens: TokenSource | None = None,
                 clock: WallClock | None = None) -> None:
        self.model = model
        self.tokens = tokens
        self.clock = clock
        self._zeros: dict[int, tuple[int, ...]] = {}
        self._coeffs: dict[int, tuple[float, float]] = {}

    def step_time(self, plan: StepPlan) -> float:
        """Predicted seconds of ``plan``."""
        return self.model.step_time(plan.prefill_new_tokens, plan.prefill_attn_sum,
                                    len(plan.prefill), len(plan.decode_ids), plan.decode_ctx_sum)

    def execute(self, plan: StepPlan) -> StepResult:
        if self.clock is not None or self.tokens is not None:
            return self._emulate(plan)
        n = len(plan.sampling_ids)
        zeros = self._zeros.get(n)
        if zeros is None:
            zeros = self._zeros[n] = (0,) * n
        return StepResult(plan.step_id, self.step_time(plan), zeros)

    def _emulate(self, plan: StepPlan) -> StepResult:
        clock = self.clock
        start = clock.start() if clock is not None else 0.0
        if self.tokens is not None:
            tokens, finished = self.tokens.sample(plan)
        else:
            tokens, finished = (0,) * len(plan.sampling_ids), ()
        predicted = self.step_time(plan) if clock is None or clock.scale > 0 else 0.0
        duration = predicted if clock is None else clock.finish(start, predicted)
        return StepResult(plan.step_id, duration, tokens, finished)

    def run_time(self, run: DecodeRun, steps: int | None = None) -> float:
        """Seconds of the first ``steps`` (default all) steps of a decode run: the model's
        ``decode_run_time`` closed form, with its per-batch-size coefficients cached."""
        k = run.steps if steps is None else steps
        b = run.decode_count
        coeffs = self._coeffs.get(b)
        if coeffs is None:
            coeffs = self._coeffs[b] = self.model.decode_coefficients(b)
        alpha, slope = coeffs
        return k * (alpha + slope * run.ctx_sum_start) + slope * b * (k * (k - 1) / 2)

    def steps_within(self, run: DecodeRun, elapsed_s: float) -> int:
        """Steps of ``run`` completed within ``elapsed_s`` seconds of its start (<= run.steps)."""
        done = self.model.decode_steps_within(run.decode_count, run.ctx_sum_start, elapsed_s)
        return min(done, run.steps)
