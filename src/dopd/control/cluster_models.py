"""The performance models of one cluster configuration, built once from its
:class:`~dopd.control.cluster_config.ClusterConfig` via :mod:`dopd.perf`: step latency (the
configured model: what the control plane believes), KV capacity in blocks, KV bytes per token and
the KV link. Every driver builds them the same way: the simulator, the live server's router,
admission control and policy, and the emulated workers.

:func:`build_belief` makes the control plane's latency model
(:class:`~dopd.control.calibration.CalibratedLatency`), fresh for every run; the simulator's
hardware truth is built in :mod:`dopd.sim.truth`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dopd.control.calibration import CalibratedLatency, CalibrationConfig
from dopd.control.cluster_config import ClusterConfig
from dopd.errors import require
from dopd.perf import KVTransferModel, build_latency_model, kv_bytes_per_token, kv_capacity_tokens
from dopd.perf.base import LatencyModel

WATERMARK = 0.01
"""Share of an instance's KV blocks that admissions leave free (vLLM's default)."""


@dataclass(frozen=True)
class ClusterModels:
    """Per-instance figures of a cluster (all instances are alike).

    ``transfer`` gives the KV link's base latency and bandwidth (the simulator shares the
    bandwidth among concurrent transfers exactly, see :mod:`dopd.kv.modeled_link`).
    ``latency`` is the configured model (``preset`` / ``calibration`` / ``profile``): what the
    control plane believes before any bias.
    """

    latency: LatencyModel
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


def build_models(config: ClusterConfig) -> ClusterModels:
    """Latency model, KV blocks and KV link of ``config``; DopdError for unknown names."""
    latency = build_latency_model(config.model, config.gpu, config.tp, config.preset,
                                  config.calibration, mem_util=config.kv_mem_util,
                                  profile=config.profile)
    tokens = kv_capacity_tokens(config.model, config.gpu, config.tp, config.kv_mem_util,
                                max_batched_tokens=config.max_batched_tokens)
    blocks = tokens // config.block_size
    require(blocks >= 1, f"{config.model} on {config.gpu} leaves no KV block")
    return ClusterModels(
        latency=latency,
        kv_blocks=blocks,
        watermark=WATERMARK,
        watermark_blocks=math.ceil(WATERMARK * blocks),
        kv_bytes_per_token=kv_bytes_per_token(config.model),
        transfer=KVTransferModel.from_hardware(config.gpu, config.tp, config.kv_link),
    )


def build_belief(config: ClusterConfig, models: ClusterModels, model_bias: float = 0.0,
                 calibration: CalibrationConfig | None = None) -> CalibratedLatency:
    """The control plane's latency model: the configured model times ``1 + model_bias``,
    learning online unless ``config.online_calibration`` is off."""
    learn = (calibration or CalibrationConfig()) if config.online_calibration else None
    return CalibratedLatency(models.latency, 1.0 + model_bias, learn)
