"""Fit a roofline preset's efficiency constants to a measured operator profile.

The constants that shape the step cost outside attention (:data:`FITTED_FIELDS`: GEMM efficiency
and padding, weight-streaming efficiency, overlap loss, per-layer overhead, all-reduce efficiency
and latencies) are fitted by bounded nonlinear least squares on the log ratio of the roofline's
``body_time`` to the profile, over the *fit* half of the points only (see
:mod:`dopd.perf.profile_fidelity` for the split); the check half is kept aside. Several starting
points are tried and the best fit kept. The other constants (attention, KV reads, engine
overheads) are not visible in the profile and keep the base preset's values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from dopd.perf.model_catalog import get_model
from dopd.perf.presets import EnginePreset, get_preset
from dopd.perf.profile_fidelity import PROFILE_MODEL, body_errors, profile_points, roofline_body
from dopd.perf.profiles import OperatorProfile, load_profile

FITTED_FIELDS = ("mfu", "gemm_pad_tokens", "hbm_efficiency", "overlap_loss", "layer_overhead_s",
                 "allreduce_efficiency", "allreduce_latency_s", "allreduce_hop_latency_s")
_SCALE = np.array([1.0, 100.0, 1.0, 1.0, 1e-4, 1.0, 1e-5, 1e-5])
_LOWER = np.array([0.2, 0.0, 0.2, 0.0, 0.0, 0.05, 0.0, 0.0])
_UPPER = np.array([1.0, 2000.0, 1.0, 1.0, 2e-4, 1.0, 1e-4, 1e-4])
_STARTS = ((0.70, 8.0, 0.80, 0.15, 20e-6, 0.50, 10e-6, 2e-6),
           (0.65, 100.0, 0.85, 0.40, 10e-6, 0.30, 20e-6, 5e-6),
           (0.75, 30.0, 0.75, 0.05, 30e-6, 0.80, 5e-6, 1e-6))


@dataclass(frozen=True, slots=True)
class PresetFit:
    """The fitted preset and its absolute relative errors on the fit and the check points."""

    preset: EnginePreset
    fit_points: int
    check_points: int
    fit_median: float
    fit_worst: float
    check_median: float
    check_worst: float


def fit_preset(profile: str | OperatorProfile = "vidur-a100",
               base: str | EnginePreset = "modern", model: str = PROFILE_MODEL) -> PresetFit:
    """Fit :data:`FITTED_FIELDS` of ``base`` to ``profile`` (see the module docstring)."""
    from scipy.optimize import least_squares  # slow to import; only fits need it

    prof = profile if isinstance(profile, OperatorProfile) else load_profile(profile)
    spec, pre = get_model(model), get_preset(base)
    points = profile_points(prof, spec)
    fit = tuple(p for p in points if not p.held_out)
    check = tuple(p for p in points if p.held_out)

    def make(z: np.ndarray) -> EnginePreset:
        values = np.clip(z * _SCALE, _LOWER, _UPPER)
        return dataclasses.replace(pre, **{f: float(v) for f, v in zip(FITTED_FIELDS, values,
                                                                       strict=True)})

    def residuals(z: np.ndarray) -> np.ndarray:
        return np.log1p(body_errors(roofline_body(spec, make(z), prof.tp_degrees), fit))

    best = None
    for start in _STARTS:
        result = least_squares(residuals, np.array(start) / _SCALE,
                               bounds=(_LOWER / _SCALE, _UPPER / _SCALE), x_scale="jac")
        if best is None or result.cost < best.cost:
            best = result
    assert best is not None
    fitted = make(best.x)
    e_fit = np.abs(body_errors(roofline_body(spec, fitted, prof.tp_degrees), fit))
    e_check = np.abs(body_errors(roofline_body(spec, fitted, prof.tp_degrees), check))
    return PresetFit(fitted, len(fit), len(check), float(np.median(e_fit)), float(e_fit.max()),
                     float(np.median(e_check)), float(e_check.max()))
