"""Measure a real engine's step times over a grid of shapes and fit the chunked calibration.

The engine is driven through its public API: prompts of chosen lengths are queued and each
:meth:`LLMEngine.step` is timed by the runner (``EngineStats.busy_s``); the step's running sums
come from ``engine.last_plan``. Three kinds of shapes (see :class:`ProfileGrid`):

- prefill ``(n, k)``: ``k`` prompts of ``n`` tokens in one step;
- decode ``(b, ctx)``: ``b`` sequences decoding from a ``ctx``-token prompt (``decode_steps``
  consecutive decode steps are timed, their contexts growing by one each, and recorded as one
  step at their mean context with their mean time; the first decode step of the batch, which
  also stages the batch's KV, is skipped);
- mixed ``(n, b, ctx)``: a prompt chunk of ``n`` tokens joins ``b`` decoding sequences.

A step's time is the runner's (``EngineStats.busy_s``: the forward pass and sampling) or, with
``wall=True``, the wall time of the whole :meth:`LLMEngine.step` (scheduling and output handling
too), which is what a serving worker reports for its steps.

Each shape runs once as a warm-up (not recorded), then ``repeats`` rounds run every shape once
(fit and held-back shapes interleaved, so a spell of load from other processes falls on all of
them alike); each of its steps is recorded once, with the median time over the rounds, as a
:class:`~dopd.perf.chunked_calibration.StepMeasurement`; :func:`profile_engine` fits the chunked
form (``dopd.perf.chunked``) on the *fit* shapes and reports its error on the *held-back* ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dopd.engine.llm_engine import LLMEngine
from dopd.engine.model import SamplingParams
from dopd.errors import require
from dopd.perf.chunked_calibration import (
    ChunkedFit,
    StepMeasurement,
    chunked_to_dict,
    fit_chunked,
    relative_errors,
)


@dataclass(frozen=True, slots=True)
class ProfileGrid:
    """Shapes to measure: ``prefill`` ``(n, k)``, ``decode`` ``(b, ctx)``, ``mixed``
    ``(n, b, ctx)``; the ``held_back`` shapes of the same forms are measured but not fitted."""

    prefill: tuple[tuple[int, int], ...]
    decode: tuple[tuple[int, int], ...]
    mixed: tuple[tuple[int, int, int], ...]
    held_back_prefill: tuple[tuple[int, int], ...] = ()
    held_back_decode: tuple[tuple[int, int], ...] = ()
    held_back_mixed: tuple[tuple[int, int, int], ...] = ()
    repeats: int = 5
    decode_steps: int = 3

    def __post_init__(self) -> None:
        require(self.repeats >= 1 and self.decode_steps >= 1, "repeats and decode steps >= 1")
        shapes = (*self.prefill, *self.decode, *self.mixed, *self.held_back_prefill,
                  *self.held_back_decode, *self.held_back_mixed)
        require(all(v >= 1 for s in shapes for v in s), "every shape entry must be >= 1")


SMALL_GRID = ProfileGrid(
    prefill=((16, 1), (64, 1), (256, 1), (512, 1), (128, 4), (32, 8)),
    decode=((1, 64), (4, 256), (16, 128), (32, 512), (8, 1024)),
    mixed=((64, 4, 128), (256, 16, 256)),
    held_back_prefill=((128, 1), (384, 1)),
    held_back_decode=((8, 256), (24, 128)),
    held_back_mixed=((128, 8, 256), (192, 4, 512)),
)
"""The default grid of ``dopd profile`` (fits the 2048-token context of dopd-tiny)."""

TINY_GRID = ProfileGrid(
    prefill=((16, 1), (128, 1), (256, 1), (64, 4)),
    decode=((1, 64), (8, 256)),
    mixed=((64, 4, 128),),
    held_back_prefill=((192, 1),),
    held_back_decode=((4, 128),),
    held_back_mixed=((96, 2, 256),),
    repeats=3, decode_steps=2,
)
"""A quick grid (tests, smoke runs)."""

SERVE_GRID = ProfileGrid(
    prefill=((16, 1), (64, 1), (128, 1), (256, 1), (512, 1), (64, 4)),
    decode=((1, 64), (4, 128), (8, 256), (16, 96), (2, 768), (24, 48)),
    mixed=((64, 4, 128), (128, 8, 192), (32, 12, 64)),
    held_back_prefill=((96, 1), (384, 1), (48, 2)),
    held_back_decode=((6, 192), (12, 64), (3, 384)),
    held_back_mixed=((96, 2, 256), (48, 6, 160)),
    repeats=3, decode_steps=4,
)
"""The start-up grid of ``dopd serve --mode real`` (self-calibration): short prompts and
batches up to the real engine's default budget, a few seconds on dopd-tiny on one CPU core."""

GRIDS = {"small": SMALL_GRID, "tiny": TINY_GRID, "serve": SERVE_GRID}


@dataclass(frozen=True, slots=True)
class EngineProfile:
    """Measured steps (fit and held back), the fit, and its errors on the held-back steps."""

    fit_steps: tuple[StepMeasurement, ...]
    held_back_steps: tuple[StepMeasurement, ...]
    fit: ChunkedFit
    held_back_median: float
    held_back_worst: float


class _Driver:
    def __init__(self, engine: LLMEngine, seed: int, wall: bool = False) -> None:
        self.engine = engine
        self.rng = np.random.default_rng(seed)
        self.vocab = int(engine.model.config.vocab_size)
        self.wall = wall

    def add(self, tokens: int, max_tokens: int) -> int:
        ids = self.rng.integers(4, self.vocab, tokens).tolist()
        return self.engine.add_request(ids, SamplingParams(max_tokens=max_tokens, ignore_eos=True,
                                                           temperature=0.0))

    def step(self) -> StepMeasurement | None:
        before = self.engine.stats.busy_s
        start = time.perf_counter()
        self.engine.step()
        seconds = (time.perf_counter() - start if self.wall
                   else self.engine.stats.busy_s - before)
        plan = self.engine.last_plan
        if plan is None:
            return None
        return StepMeasurement(plan.prefill_new_tokens, plan.prefill_attn_sum,
                               plan.prefill_count, plan.decode_count, plan.decode_ctx_sum,
                               seconds * 1e3)

    def drain(self, ids: Sequence[int]) -> None:
        for rid in ids:
            self.engine.abort(rid)
        while self.engine.has_unfinished():
            self.engine.step()

    def prefill(self, n: int, k: int) -> list[StepMeasurement]:
        ids = [self.add(n, 1) for _ in range(k)]
        step = self.step()
        self.drain(ids)
        return [step] if step is not None and step.kind == "prefill" else []

    def decode(self, b: int, ctx: int, steps: int) -> list[StepMeasurement]:
        ids = [self.add(ctx, steps + 3) for _ in range(b)]
        out: list[StepMeasurement] = []
        for _ in range(steps + 9 + b * ctx // 64):  # prefill chunks first, then decodes
            step = self.step()
            if step is not None and step.kind == "decode" and step.decode_count == b:
                out.append(step)
            if len(out) == steps + 1:
                break
        out = out[1:]  # the first decode step of a new batch also stages its KV
        self.drain(ids)
        if not out:
            return []
        # one step at the run's mean context: single decode steps of one batch differ by up to
        # 2x (a staging rebuild when a block table changes), their mean is stable, and the
        # form is affine in the context sum at a fixed batch
        return [StepMeasurement(0, 0, 0, b, round(sum(s.decode_ctx_sum for s in out) / len(out)),
                                sum(s.step_ms for s in out) / len(out))]

    def mixed(self, n: int, b: int, ctx: int) -> list[StepMeasurement]:
        ids = [self.add(ctx, 64) for _ in range(b)]
        for _ in range(8):
            step = self.step()
            if step is not None and step.kind == "decode":
                break
        ids.append(self.add(n, 1))
        step = self.step()
        self.drain(ids)
        return [step] if step is not None and step.kind == "mixed" else []


Run = Callable[[], list[StepMeasurement]]


def _runs(driver: _Driver, prefill: Sequence[tuple[int, int]],
          decode: Sequence[tuple[int, int]], mixed: Sequence[tuple[int, int, int]],
          decode_steps: int) -> list[Run]:
    runs: list[Run] = [lambda s=s: driver.prefill(*s) for s in prefill]
    runs += [lambda s=s: driver.decode(*s, decode_steps) for s in decode]
    runs += [lambda s=s: driver.mixed(*s) for s in mixed]
    return runs


def _measure_rounds(runs: Sequence[Run], repeats: int) -> list[list[StepMeasurement]]:
    """Each run once as a warm-up (allocator, thread pools, first touch of KV blocks), then
    ``repeats`` rounds over all of them, so a spell of load from other processes falls on every
    shape alike; per run, its steps with the median time over the rounds."""
    for run in runs:
        run()
    trials: list[list[list[StepMeasurement]]] = [[] for _ in runs]
    for _ in range(repeats):
        for i, run in enumerate(runs):
            trials[i].append(run())
    return [_median_steps(t) for t in trials]


def measure(engine: LLMEngine, prefill: Sequence[tuple[int, int]],
            decode: Sequence[tuple[int, int]], mixed: Sequence[tuple[int, int, int]],
            repeats: int = 5, decode_steps: int = 3, seed: int = 0,
            wall: bool = False) -> list[StepMeasurement]:
    """Measured steps of ``engine`` at the shapes given (module docstring; ``wall``: time the
    whole engine step); the engine must be idle and is left idle."""
    require(not engine.has_unfinished(), "the engine must be idle to be profiled")
    driver = _Driver(engine, seed, wall)
    per_run = _measure_rounds(_runs(driver, prefill, decode, mixed, decode_steps), repeats)
    return [step for steps in per_run for step in steps]


def _median_steps(trials: list[list[StepMeasurement]]) -> list[StepMeasurement]:
    """The j-th step of every trial (same shape each time) as one step with the median time:
    on a loaded machine single steps vary several-fold."""
    out = []
    for j in range(min((len(t) for t in trials), default=0)):
        steps = [t[j] for t in trials]
        if len({s.sums() for s in steps}) == 1:
            out.append(StepMeasurement(*steps[0].sums(),
                                       step_ms=float(np.median([s.step_ms for s in steps]))))
    return out


def profile_engine(engine: LLMEngine, grid: ProfileGrid = SMALL_GRID,
                   seed: int = 0, wall: bool = False) -> EngineProfile:
    """Measure ``grid`` on ``engine`` (fit and held-back shapes in the same rounds), fit the
    chunked form, check it on the held-back shapes (``wall``: see :func:`measure`)."""
    require(not engine.has_unfinished(), "the engine must be idle to be profiled")
    driver = _Driver(engine, seed, wall)
    fit_runs = _runs(driver, grid.prefill, grid.decode, grid.mixed, grid.decode_steps)
    held_runs = _runs(driver, grid.held_back_prefill, grid.held_back_decode,
                      grid.held_back_mixed, grid.decode_steps)
    per_run = _measure_rounds([*fit_runs, *held_runs], grid.repeats)
    fit_steps = [step for steps in per_run[:len(fit_runs)] for step in steps]
    held = [step for steps in per_run[len(fit_runs):] for step in steps]
    fit = fit_chunked(fit_steps)
    errors = np.abs(relative_errors(fit.coefficients, held)) if held else np.zeros(1)
    return EngineProfile(tuple(fit_steps), tuple(held), fit, float(np.median(errors)),
                         float(errors.max()))


def profile_document(result: EngineProfile, measured_on: dict[str, Any]) -> dict[str, Any]:
    """The JSON file of a profile (``dopd profile --out``, ``dopd serve --save-calibration``):
    the chunked form's coefficients (what ``--calibration`` reads), the fit's and the held-back
    shapes' errors, and ``measured_on`` (where and how it was measured)."""
    content: dict[str, Any] = chunked_to_dict(result.fit.coefficients)
    content["fit"] = {"steps": result.fit.samples, "median_rel_error": result.fit.median_rel_error,
                      "max_rel_error": result.fit.max_rel_error}
    content["held_back"] = {"steps": len(result.held_back_steps),
                            "median_rel_error": result.held_back_median,
                            "max_rel_error": result.held_back_worst}
    content["measured_on"] = dict(measured_on)
    return content
