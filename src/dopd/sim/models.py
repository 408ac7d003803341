"""The performance models of a simulated run, built once from its :class:`SimConfig` via
:mod:`dopd.perf`: step latency, KV capacity in blocks, KV bytes per token and the KV link."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dopd.errors import require
from dopd.perf import KVTransferModel, build_latency_model, kv_bytes_per_token, kv_capacity_tokens
from dopd.perf.base import LatencyModel
from dopd.sim.api import SimConfig

WATERMARK = 0.01
"""Share of an instance's KV blocks that admissions leave free (vLLM's default)."""


@dataclass(frozen=True)
class SimModels:
    """Per-instance figures of a run (all instances are alike).

    ``transfer`` gives the KV link's base latency and bandwidth; the simulator shares the
    bandwidth among concurrent transfers exactly (see :mod:`dopd.sim.transfer`).
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


def build_models(config: SimConfig) -> SimModels:
    """Latency model, KV blocks and KV link of ``config``; DopdError for unknown names."""
    latency = build_latency_model(config.model, config.gpu, config.tp, config.preset,
                                  config.calibration, mem_util=config.kv_mem_util,
                                  profile=config.profile)
    tokens = kv_capacity_tokens(config.model, config.gpu, config.tp, config.kv_mem_util,
                                max_batched_tokens=config.max_batched_tokens)
    blocks = tokens // config.block_size
    require(blocks >= 1, f"{config.model} on {config.gpu} leaves no KV block")
    return SimModels(
        latency=latency,
        kv_blocks=blocks,
        watermark=WATERMARK,
        watermark_blocks=math.ceil(WATERMARK * blocks),
        kv_bytes_per_token=kv_bytes_per_token(config.model),
        transfer=KVTransferModel.from_hardware(config.gpu, config.tp, config.kv_link),
    )
