"""Performance models: hardware and model catalogs, KV sizing, step latency, KV transfer.

Entry points: :func:`build_latency_model` (roofline under a preset, or a calibration),
:func:`kv_capacity_tokens`, :class:`KVTransferModel` and :func:`fidelity_report`.
"""

from dopd.perf.anchors import AnchorFit, anchor_fits, builtin_calibration_names, get_anchor_fit
from dopd.perf.base import BatchShape, LatencyModel, StepBreakdown
from dopd.perf.calibration import (
    CalibrationFit,
    StepSample,
    fit_calibration,
    load_calibration,
    read_samples,
    save_calibration,
)
from dopd.perf.factory import build_latency_model, is_builtin_calibration
from dopd.perf.fidelity import FidelityReport, FidelityRow, fidelity_report
from dopd.perf.fitted import DistServeCoefficients, FittedLatencyModel
from dopd.perf.hardware import GPUS, HardwareSpec, get_gpu, gpu_names
from dopd.perf.kv import (
    check_tp,
    kv_bytes_per_token,
    kv_bytes_per_token_per_gpu,
    kv_capacity_tokens,
    kv_heads_per_gpu,
)
from dopd.perf.latency import RooflineLatencyModel
from dopd.perf.model_catalog import MODELS, ModelSpec, get_model, model_names
from dopd.perf.presets import PRESETS, EnginePreset, get_preset
from dopd.perf.transfer import KVTransferModel

__all__ = [
    "GPUS",
    "MODELS",
    "PRESETS",
    "AnchorFit",
    "BatchShape",
    "CalibrationFit",
    "DistServeCoefficients",
    "EnginePreset",
    "FidelityReport",
    "FidelityRow",
    "FittedLatencyModel",
    "HardwareSpec",
    "KVTransferModel",
    "LatencyModel",
    "ModelSpec",
    "RooflineLatencyModel",
    "StepBreakdown",
    "StepSample",
    "anchor_fits",
    "build_latency_model",
    "builtin_calibration_names",
    "check_tp",
    "fidelity_report",
    "fit_calibration",
    "get_anchor_fit",
    "get_gpu",
    "get_model",
    "get_preset",
    "gpu_names",
    "is_builtin_calibration",
    "kv_bytes_per_token",
    "kv_bytes_per_token_per_gpu",
    "kv_capacity_tokens",
    "kv_heads_per_gpu",
    "load_calibration",
    "model_names",
    "read_samples",
    "save_calibration",
]
