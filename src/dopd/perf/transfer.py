"""KV-cache transfer time between a prefill and a decode instance.

A transfer of ``b`` bytes takes ``base_latency_s + b / (bandwidth_Bps / concurrent)``: a fixed cost
(connection set-up, handshake, the first-byte latency of RDMA) plus the bytes over the link's
bandwidth, shared equally by the ``concurrent`` transfers in flight on it.

:meth:`KVTransferModel.from_hardware` derives the bandwidth from the hardware catalog. With
``link="nic"`` (the default: disaggregated instances usually sit on different nodes) each GPU of a
``tp``-way instance sends its KV shard over its own NIC, so the instance's bandwidth is
``tp * nic_Bps``; with ``link="nvlink"`` (both instances in one node) it is ``tp * link_Bps``. Both
are scaled by ``efficiency`` (default 0.8, a typical achieved fraction of line rate for large RDMA
or NVLink copies). The default base latencies (1 ms over the network, 0.1 ms within a node) are
estimates of the control-plane round trip of current KV connectors, not measurements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dopd.errors import DopdError, require
from dopd.perf.hardware import HardwareSpec, get_gpu

DEFAULT_BASE_LATENCY_S = {"nic": 1e-3, "nvlink": 1e-4}


@dataclass(frozen=True, slots=True)
class KVTransferModel:
    """Transfer time = base latency + bytes / (bandwidth / concurrent transfers)."""

    base_latency_s: float
    bandwidth_Bps: float

    def __post_init__(self) -> None:
        require(math.isfinite(self.base_latency_s) and self.base_latency_s >= 0,
                f"base latency must be >= 0 s, got {self.base_latency_s}")
        require(math.isfinite(self.bandwidth_Bps) and self.bandwidth_Bps > 0,
                f"bandwidth must be > 0 B/s, got {self.bandwidth_Bps}")

    def transfer_time(self, num_bytes: float, concurrent: int = 1) -> float:
        """Seconds to move ``num_bytes`` while ``concurrent`` (>= 1) transfers share the link."""
        if num_bytes < 0 or concurrent < 1:
            raise DopdError(f"bad transfer: {num_bytes} bytes with {concurrent} concurrent")
        return self.base_latency_s + num_bytes * concurrent / self.bandwidth_Bps

    @classmethod
    def from_hardware(cls, gpu: str | HardwareSpec, tp: int = 1, link: str = "nic",
                      efficiency: float = 0.8,
                      base_latency_s: float | None = None) -> KVTransferModel:
        """The transfer model of ``tp``-GPU instances of ``gpu`` over ``link`` ("nic"/"nvlink")."""
        hw = get_gpu(gpu)
        key = link.strip().lower()
        require(key in DEFAULT_BASE_LATENCY_S,
                f"unknown KV link {link!r} (known: {', '.join(DEFAULT_BASE_LATENCY_S)})")
        require(tp >= 1, f"tp must be >= 1, got {tp}")
        require(0 < efficiency <= 1, f"link efficiency must be in (0, 1], got {efficiency}")
        per_gpu = hw.nic_Bps if key == "nic" else hw.link_Bps
        base = DEFAULT_BASE_LATENCY_S[key] if base_latency_s is None else base_latency_s
        return cls(base, tp * per_gpu * efficiency)
