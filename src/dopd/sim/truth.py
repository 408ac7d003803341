"""The simulated hardware: what a step really takes (the truth), as opposed to what the control
plane predicts (the belief, :mod:`dopd.control.calibration`).

:class:`HardwareTruth` times the instances' steps and decode runs from the truth's latency model,
a seeded lognormal noise per step and an optional slowdown from a given time on (see
:class:`~dopd.sim.api.TruthSpec`). Only the simulated cluster holds it; routers and cluster
policies never get a reference to it (they see observed step times, as a live front end does).
"""

from __future__ import annotations

import math

import numpy as np

from dopd.engine import LatencyModelRunner
from dopd.engine.plan import DecodeRun, StepPlan, StepResult
from dopd.perf import build_latency_model
from dopd.perf.base import LatencyModel
from dopd.sim.api import SimConfig, TruthSpec

TRUTH_PRESET_PREFIX = "preset:"
TRUTH_PROFILE_PREFIX = "profile:"

_BLOCK = 4096  # noise draws generated at a time
_SEED_SALT = 0x7E0C_4A11  # keeps the noise stream apart from other users of the run's seed


class HardwareTruth:
    """Step times of the simulated GPUs: ``model``'s time x slowdown(t) x noise.

    Deterministic for a ``seed``: the noise is one stream drawn in event order, and the event
    order of a run is itself deterministic.
    """

    __slots__ = ("_buf", "_i", "_rng", "_run_sigma", "model", "runner", "sigma", "slow_at",
                 "slowdown")

    def __init__(self, model: LatencyModel, spec: TruthSpec, seed: int = 0) -> None:
        self.model = model
        self.runner = LatencyModelRunner(model)
        self.sigma = float(spec.step_noise)
        self.slowdown = float(spec.slowdown)
        self.slow_at = math.inf if spec.slowdown_at_s is None else float(spec.slowdown_at_s)
        self._rng = np.random.default_rng([seed, _SEED_SALT])
        self._buf: list[float] = []
        self._i = 0
        self._run_sigma: dict[int, float] = {}

    def _z(self) -> float:
        if self._i >= len(self._buf):
            self._buf = self._rng.standard_normal(_BLOCK).tolist()
            self._i = 0
        z = self._buf[self._i]
        self._i += 1
        return z

    def _drift(self, now: float) -> float:
        return self.slowdown if now >= self.slow_at else 1.0

    def step_factor(self, now: float) -> float:
        """The factor of one step starting at ``now`` (slowdown x a fresh noise draw)."""
        if self.sigma == 0.0:
            return self._drift(now)
        s = self.sigma
        return self._drift(now) * math.exp(s * self._z() - 0.5 * s * s)

    def run_factor(self, run: DecodeRun, now: float) -> float:
        """The factor of a decode run starting at ``now``: one draw with the mean (1) and the
        variance of the mean of ``run.steps`` independent step factors."""
        if self.sigma == 0.0:
            return self._drift(now)
        k = max(run.steps, 1)
        s = self._run_sigma.get(k)
        if s is None:
            if len(self._run_sigma) > 4096:
                self._run_sigma.clear()
            s = self._run_sigma[k] = math.sqrt(math.log1p(math.expm1(self.sigma ** 2) / k))
        return self._drift(now) * math.exp(s * self._z() - 0.5 * s * s)

    def execute(self, plan: StepPlan, now: float) -> StepResult:
        """Run one step starting at ``now``: its result with the true duration."""
        result = self.runner.execute(plan)
        factor = self.step_factor(now)
        if factor == 1.0:
            return result
        return StepResult(result.step_id, result.duration_s * factor, result.tokens,
                          result.finished)

    def run_time(self, run: DecodeRun, factor: float, steps: int | None = None) -> float:
        """True seconds of the first ``steps`` (default all) steps of ``run`` with its factor."""
        return factor * self.runner.run_time(run, steps)

    def steps_within(self, run: DecodeRun, factor: float, elapsed_s: float) -> int:
        """Steps of ``run`` (with its factor) completed within ``elapsed_s`` of its start."""
        return self.runner.steps_within(run, elapsed_s / factor)


def truth_latency_model(config: SimConfig) -> LatencyModel:
    """What the simulated hardware does before noise and drift: the configured model's figures
    (its own object: nothing shared with the belief) unless ``config.truth.truth_calibration``
    names another source; DopdError for unknown names."""
    source = config.truth.truth_calibration
    if source is None:
        return build_latency_model(config.model, config.gpu, config.tp, config.preset,
                                   config.calibration, mem_util=config.kv_mem_util,
                                   profile=config.profile)
    if source.startswith(TRUTH_PROFILE_PREFIX):
        return build_latency_model(config.model, config.gpu, config.tp, config.preset,
                                   mem_util=config.kv_mem_util,
                                   profile=source[len(TRUTH_PROFILE_PREFIX):])
    if source.startswith(TRUTH_PRESET_PREFIX):
        return build_latency_model(config.model, config.gpu, config.tp,
                                   source[len(TRUTH_PRESET_PREFIX):], mem_util=config.kv_mem_util)
    return build_latency_model(config.model, config.gpu, config.tp, config.preset, source,
                               mem_util=config.kv_mem_util)


def build_truth(config: SimConfig, seed: int = 0) -> HardwareTruth:
    """The simulated hardware of one run of ``config`` (noise seeded by ``seed``)."""
    return HardwareTruth(truth_latency_model(config), config.truth, seed)
