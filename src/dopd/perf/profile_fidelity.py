"""How closely a latency model reproduces a measured operator profile outside attention.

The reference at ``T`` tokens on ``tp`` GPUs is the profile's step cost outside attention
(:meth:`dopd.perf.profiles.OperatorProfile.nonattention_ms`: linear layers, norms, activation,
rotary, residual add and TP all-reduces; no attention, no LM head, no CPU overheads). A model is
compared through its ``body_time(tokens)``, the same part of its step.

**Split.** Per TP degree, the profiled token counts in ascending order alternate between the
*fit* set (even positions: 1, 4, 16, 32, ...) and the *check* set (odd positions: 2, 8, 24, ...);
all-reduce message sizes alternate the same way. The roofline presets' constants are fitted on
the fit set only (:mod:`dopd.perf.preset_fit`); the check set is kept aside. The profile model is
checked honestly the same way: a model built from the fit half of the tables is evaluated at the
check half, so its error is the interpolation error between measured points, not zero by
construction.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dopd.perf.latency import RooflineLatencyModel
from dopd.perf.model_catalog import ModelSpec, get_model
from dopd.perf.presets import EnginePreset, get_preset
from dopd.perf.profiled import ProfileLatencyModel
from dopd.perf.profiles import OperatorProfile, load_profile

PROFILE_MODEL = "llama-3-8b"
PROFILE_GPU = "a100-80gb"


@dataclass(frozen=True, slots=True)
class ProfilePoint:
    """One reference point: ``ref_ms`` outside attention at ``tokens`` on ``tp`` GPUs."""

    tp: int
    tokens: int
    held_out: bool
    ref_ms: float


@dataclass(frozen=True, slots=True)
class ProfileFidelityRow:
    """Absolute relative errors of one model at one TP degree over the check set (and, for the
    roofline, over the fit set and all points)."""

    model: str
    tp: int
    points: int
    median: float
    worst: float


@dataclass(frozen=True, slots=True)
class ProfileFidelityReport:
    """Per-TP rows and the errors over all check points of all TP degrees."""

    model: str
    reference: str
    rows: tuple[ProfileFidelityRow, ...]
    median: float
    worst: float


def profile_points(profile: OperatorProfile, model: ModelSpec) -> tuple[ProfilePoint, ...]:
    """Every profiled (TP, token count) with its reference time and split (module docstring)."""
    points = []
    for tp in profile.tp_degrees:
        tokens = np.asarray(profile.layer_ms[tp][0])
        ref = profile.nonattention_ms(model, tp, tokens)
        points.extend(ProfilePoint(tp, int(t), i % 2 == 1, float(r))
                      for i, (t, r) in enumerate(zip(tokens, ref, strict=True)))
    return tuple(points)


def fit_half(profile: OperatorProfile) -> OperatorProfile:
    """``profile`` with only the fit set of its token counts and all-reduce sizes."""
    def even(table: tuple[tuple[float, ...], tuple[float, ...]]
             ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return table[0][::2], table[1][::2]

    return dataclasses.replace(
        profile, name=f"{profile.name} (fit half)",
        layer_ms={tp: even(t) for tp, t in profile.layer_ms.items()},
        allreduce_ms={w: even(t) for w, t in profile.allreduce_ms.items()},
    )


def body_errors(body_time: Callable[[int, int], float],
                points: tuple[ProfilePoint, ...]) -> np.ndarray:
    """Signed relative errors ``body_time(tp, tokens) [s] / ref - 1`` at ``points``."""
    return np.array([body_time(p.tp, p.tokens) * 1e3 / p.ref_ms - 1.0 for p in points])


def roofline_body(model: ModelSpec, preset: EnginePreset, tps: tuple[int, ...],
                  gpu: str = PROFILE_GPU) -> Callable[[int, int], float]:
    """``(tp, tokens) -> seconds`` outside attention of the roofline under ``preset``."""
    models = {tp: RooflineLatencyModel(model, gpu, tp, preset, check_capacity=False)
              for tp in tps}
    return lambda tp, tokens: models[tp].body_time(tokens)


def _report(label: str, reference: str, errors: np.ndarray,
            points: tuple[ProfilePoint, ...]) -> ProfileFidelityReport:
    rows = []
    for tp in sorted({p.tp for p in points}):
        e = [abs(float(x)) for x, p in zip(errors, points, strict=True) if p.tp == tp]
        rows.append(ProfileFidelityRow(label, tp, len(e), statistics.median(e), max(e)))
    absolute = np.abs(errors)
    return ProfileFidelityReport(label, reference, tuple(rows), float(np.median(absolute)),
                                 float(absolute.max()))


def preset_profile_fidelity(preset: str | EnginePreset = "modern",
                            profile: str | OperatorProfile = "vidur-a100",
                            model: str = PROFILE_MODEL, held_out_only: bool = True
                            ) -> ProfileFidelityReport:
    """Errors of the roofline under ``preset`` against ``profile`` (check set, or all points)."""
    prof = profile if isinstance(profile, OperatorProfile) else load_profile(profile)
    spec, pre = get_model(model), get_preset(preset)
    points = tuple(p for p in profile_points(prof, spec) if p.held_out or not held_out_only)
    errors = body_errors(roofline_body(spec, pre, prof.tp_degrees), points)
    return _report(f"roofline {pre.name}", prof.name, errors, points)


def profile_model_fidelity(profile: str | OperatorProfile = "vidur-a100",
                           model: str = PROFILE_MODEL) -> ProfileFidelityReport:
    """Errors of the profile model built from the fit half, at the check half."""
    prof = profile if isinstance(profile, OperatorProfile) else load_profile(profile)
    spec = get_model(model)
    half = fit_half(prof)
    models = {tp: ProfileLatencyModel(spec, PROFILE_GPU, tp, half, check_capacity=False)
              for tp in prof.tp_degrees}
    points = tuple(p for p in profile_points(prof, spec) if p.held_out)
    errors = body_errors(lambda tp, tokens: models[tp].body_time(tokens), points)
    return _report("profile model", prof.name, errors, points)
