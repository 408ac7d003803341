"""What a router is built with: :class:`RouterContext` (the latency model it predicts with, the
instance's step budget and KV blocks, the SLO and the KV link)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dopd.perf.base import LatencyModel
from dopd.types import SLO

if TYPE_CHECKING:
    from dopd.control.cluster_config import ClusterConfig
    from dopd.control.cluster_models import ClusterModels


@dataclass(frozen=True)
class RouterContext:
    """What a router factory gets.

    ``slo`` is the run's SLO when it has one; ``kv_bytes_per_token`` and the ``transfer_*``
    figures model a KV hand-off (base latency plus bytes over the sender's bandwidth);
    ``options`` is the text after ``NAME:`` in the router spec.
    """

    latency: LatencyModel
    max_batched_tokens: int
    block_size: int
    watermark_blocks: int
    slo: SLO | None = None
    kv_bytes_per_token: int = 0
    transfer_latency_s: float = 0.0
    transfer_bandwidth_Bps: float = math.inf
    options: str = ""

    @classmethod
    def of(cls, config: ClusterConfig, models: ClusterModels, slo: SLO | None = None,
           latency: LatencyModel | None = None) -> RouterContext:
        """The context of a cluster, predicting with ``latency`` (the control plane's
        belief; default: the configured model)."""
        return cls(models.latency if latency is None else latency, config.max_batched_tokens,
                   config.block_size,
                   models.watermark_blocks, slo, models.kv_bytes_per_token,
                   models.transfer_latency_s, models.transfer_bandwidth_Bps)

    def transfer_s(self, prompt_tokens: int) -> float:
        """Predicted seconds to hand over the KV of ``prompt_tokens`` tokens on an idle link."""
        return (self.transfer_latency_s
                + prompt_tokens * self.kv_bytes_per_token / self.transfer_bandwidth_Bps)
