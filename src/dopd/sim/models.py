"""The performance models of a simulated run, built once from its :class:`SimConfig` via
:mod:`dopd.perf`: step latency (the configured model and the hardware truth's), KV capacity in
blocks, KV bytes per token and the KV link.

:func:`build_truth` and :func:`build_belief` make a run's two sides: the simulated hardware
(:class:`~dopd.sim.truth.HardwareTruth`) and the control plane's latency model
(:class:`~dopd.control.calibration.CalibratedLatency`), fresh for every run."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dopd.control.calibration import CalibratedLatency, CalibrationConfig
from dopd.errors import require
from dopd.perf import KVTransferModel, build_latency_model, kv_bytes_per_token, kv_capacity_tokens
from dopd.perf.base import LatencyModel
from dopd.sim.api import SimConfig
from dopd.sim.truth import HardwareTruth

TRUTH_PRESET_PREFIX = "preset:"
TRUTH_PROFILE_PREFIX = "profile:"

WATERMARK = 0.01
"""Share of an instance's KV blocks that admissions leave free (vLLM's default)."""


@dataclass(frozen=True)
class SimModels:
    """Per-instance figures of a run (all instances are alike).

    ``transfer`` gives the KV link's base latency and bandwidth; the simulator shares the
    bandwidth among concurrent transfers exactly (see :mod:`dopd.sim.transfer`).
    ``latency`` is the configured model (``preset`` / ``calibration``): what the control plane
    believes before any bias; ``truth_latency`` is what the hardware does before noise and
    drift (the same figures as ``latency`` (another object) unless
    ``config.truth.truth_calibration`` names another source).
    """

    latency: LatencyModel
    truth_latency: LatencyModel
    kv_blocks: int
    watermark: float
    watermark_blocks: int
    kv_bytes_per_token: int
    transfer: KVTransferModel

    @property
    def transfer_latency_s(self) -> float:
        return self.transfer.base_latency_s

    @property
    def transfer_bandwidth_Bps(self) -> float:
        return self.transfer.bandwidth_Bps


def build_models(config: SimConfig) -> SimModels:
    """Latency model, KV blocks and KV link of ``config``; DopdError for unknown names."""
    latency = build_latency_model(config.model, config.gpu, config.tp, config.preset,
                                  config.calibration, mem_util=config.kv_mem_util,
                                  profile=config.profile)
    source = config.truth.truth_calibration
    if source is None:  # the same figures, but its own object: nothing shared with the belief
        truth = build_latency_model(config.model, config.gpu, config.tp, config.preset,
                                    config.calibration, mem_util=config.kv_mem_util,
                                    profile=config.profile)
    else:
        if source.startswith(TRUTH_PROFILE_PREFIX):
            truth = build_latency_model(config.model, config.gpu, config.tp, config.preset,
                                        mem_util=config.kv_mem_util,
                                        profile=source[len(TRUTH_PROFILE_PREFIX):])
        elif source.startswith(TRUTH_PRESET_PREFIX):
            truth = build_latency_model(config.model, config.gpu, config.tp,
                                        source[len(TRUTH_PRESET_PREFIX):],
                                        mem_util=config.kv_mem_util)
        else:
            truth = build_latency_model(config.model, config.gpu, config.tp, config.preset,
                                        source, mem_util=config.kv_mem_util)
    tokens = kv_capacity_tokens(config.model, config.gpu, config.tp, config.kv_mem_util,
                                max_batched_tokens=config.max_batched_tokens)
    blocks = tokens // config.block_size
    require(blocks >= 1, f"{config.model} on {config.gpu} leaves no KV block")
    return SimModels(
        latency=latency,
        truth_latency=truth,
        kv_blocks=blocks,
        watermark=WATERMARK,
        watermark_blocks=math.ceil(WATERMARK * blocks),
        kv_bytes_per_token=kv_bytes_per_token(config.model),
        transfer=KVTransferModel.from_hardware(config.gpu, config.tp, config.kv_link),
    )


def build_truth(config: SimConfig, models: SimModels, seed: int = 0) -> HardwareTruth:
    """The simulated hardware of one run of ``config`` (noise seeded by ``seed``)."""
    return HardwareTruth(models.truth_latency, config.truth, seed)


def build_belief(config: SimConfig, models: SimModels,
                 calibration: CalibrationConfig | None = None) -> CalibratedLatency:
    """The control plane's latency model of one run: the configured model times ``1 +
    model_bias``, learning online unless ``config.online_calibration`` is off."""
    learn = (calibration or CalibrationConfig()) if config.online_calibration else None
    return CalibratedLatency(models.latency, 1.0 + config.truth.model_bias, learn)
