"""Runners execute a :class:`~dopd.engine.plan.StepPlan`; here the latency-model runner.

A runner is anything with ``execute(plan) -> StepResult``. :class:`LatencyModelRunner` predicts
the step's duration with a ``dopd.perf`` latency model and samples token 0 for every sampling
request; the simulator advances its clock by that duration and the emulated workers sleep it.
It also times the simulator's multi-step decode runs in closed form.
"""

from __future__ import annotations

from typing import Protocol

from dopd.engine.plan import DecodeRun, StepPlan, StepResult


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


class LatencyModelRunner:
    """Times steps with a latency model; samples token id 0 (no model output exists)."""

    __slots__ = ("_coeffs", "_zeros", "model")

    def __init__(self, model: StepTimeModel) -> None:
        self.model = model
        self._zeros: dict[int, tuple[int, ...]] = {}
        self._coeffs: dict[int, tuple[float, float]] = {}

    def step_time(self, plan: StepPlan) -> float:
        """Predicted seconds of ``plan``."""
        return self.model.step_time(plan.prefill_new_tokens, plan.prefill_attn_sum,
                                    len(plan.prefill), len(plan.decode_ids), plan.decode_ctx_sum)

    def execute(self, plan: StepPlan) -> StepResult:
        n = len(plan.sampling_ids)
        zeros = self._zeros.get(n)
        if zeros is None:
            zeros = self._zeros[n] = (0,) * n
        return StepResult(plan.step_id, self.step_time(plan), zeros)

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
