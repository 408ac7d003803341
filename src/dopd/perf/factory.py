"""One entry point that builds the latency model of an instance type."""

from __future__ import annotations

from pathlib import Path

from dopd.errors import require
from dopd.perf.anchors import ANCHOR_GPU, builtin_calibration_names, get_anchor_fit
from dopd.perf.base import LatencyModel
from dopd.perf.calibration import load_calibration
from dopd.perf.chunked import ChunkedCoefficients, ChunkedLatencyModel
from dopd.perf.fitted import DistServeCoefficients, FittedLatencyModel
from dopd.perf.hardware import HardwareSpec, get_gpu
from dopd.perf.kv import check_tp, kv_capacity_tokens
from dopd.perf.latency import RooflineLatencyModel
from dopd.perf.model_catalog import ModelSpec, get_model
from dopd.perf.presets import EnginePreset
from dopd.perf.profiled import ProfileLatencyModel


def is_builtin_calibration(source: object) -> bool:
    """True if ``source`` names a shipped fit (``engine:model:tpN``)."""
    return isinstance(source, str) and source.strip().lower() in builtin_calibration_names()


def build_latency_model(
    model: str | ModelSpec,
    gpu: str | HardwareSpec,
    tp: int = 1,
    preset: str | EnginePreset = "modern",
    calibration: str | Path | DistServeCoefficients | ChunkedCoefficients | None = None,
    mem_util: float = 0.9,
    profile: str | Path | None = None,
) -> LatencyModel:
    """The latency model of ``model`` on ``tp`` GPUs of type ``gpu``.

    Without ``calibration``: the roofline model under ``preset``. With one: a
    :class:`FittedLatencyModel` (or a :class:`ChunkedLatencyModel` for the chunked-prefill
    form) from coefficients, a built-in name (which must match the model,
    GPU and TP it was measured on), a ``.csv`` of measured steps to fit or a ``.json`` of
    coefficients (see ``dopd.perf.calibration``); ``preset`` is then unused. Either way the KV
    capacity (checked by ``breakdown`` / ``step_time_for``) is that of the model on the GPUs at
    ``mem_util``. With ``profile`` (a shipped profile name such as ``vidur-a100`` or a profile
    folder, see ``dopd.perf.profiles``): a :class:`ProfileLatencyModel`, with attention and
    overheads from ``preset``; it excludes ``calibration``. Bad names, TP or files raise
    ``DopdError``.
    """
    spec = get_model(model)
    hw = get_gpu(gpu)
    check_tp(spec, tp)
    if profile is not None:
        require(calibration is None, "give a latency profile or a calibration, not both")
        return ProfileLatencyModel(spec, hw, tp, profile, preset, mem_util=mem_util)
    if calibration is None:
        return RooflineLatencyModel(spec, hw, tp, preset, mem_util=mem_util)
    label = "custom coefficients"
    coeffs: DistServeCoefficients | ChunkedCoefficients
    if isinstance(calibration, (DistServeCoefficients, ChunkedCoefficients)):
        coeffs = calibration
    else:
        label = str(calibration)
        if is_builtin_calibration(calibration):
            fit = get_anchor_fit(str(calibration))
            require(fit.model == spec.name and fit.tp == tp and hw.name == ANCHOR_GPU,
                    f"calibration {fit.name} was measured for {fit.model} at tp={fit.tp} on "
                    f"{ANCHOR_GPU}, not {spec.name} at tp={tp} on {hw.name}")
        coeffs = load_calibration(calibration)
    capacity = kv_capacity_tokens(spec, hw, tp, mem_util)
    name = f"{spec.name} on {tp}x {hw.name} (calibration {label})"
    if isinstance(coeffs, ChunkedCoefficients):
        return ChunkedLatencyModel(coeffs, capacity, name=name)
    return FittedLatencyModel(coeffs, capacity, name=name)
