"""The one configuration of a cluster that the control plane reads: instance type and size,
batch limits, KV link, timings and the router. Every driver builds it once and hands the same
object to the policy, the router, admission control and the workers: the simulator (as part of
:class:`~dopd.sim.api.SimConfig`, which adds the simulated hardware's truth) and the live server
(from :class:`~dopd.serve.serve_config.ServeConfig`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dopd.errors import require


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Cluster, hardware and engine settings the control plane plans with.

    ``instances`` is the instance budget (each instance = ``tp`` GPUs). ``calibration`` is a
    built-in calibration name or a path (see ``dopd.perf``); ``profile`` a shipped operator
    profile (``vidur-a100``) or a profile folder; with neither, the roofline ``preset``.
    ``router`` names a routing policy of ``dopd.control.routing.router.ROUTERS``; ``"auto"`` uses
    the cluster policy's own choice. ``max_batched_tokens`` / ``max_num_seqs`` are each
    instance's batch limits, the same in the policy's model and in the engines that run.
    """


    model: str = "llama-3-8b"
    gpu: str = "a100-80gb"
    tp: int = 1
    preset: str = "modern"
    calibration: str | None = None
    profile: str | None = None
    instances: int = 8
    kv_mem_util: float = 0.9
    block_size: int = 16
    max_batched_tokens: int = 8192
    max_num_seqs: int = 256
    chunked_prefill: bool = True
    prefill_priority: bool = False
    kv_link: str = "nic"
    role_switch_s: float = 1.0
    cold_start_s: float = 30.0
    tick_s: float = 1.0
    timeline_s: float = 1.0
    router: str = "auto"
    online_calibration: bool = True

    def __post_init__(self) -> None:
        require(self.instances >= 1, f"instances must be >= 1, got {self.instances}")
        require(self.tp >= 1, f"tp must be >= 1, got {self.tp}")
        require(
            0 < self.kv_mem_util <= 1,
            f"KV memory utilisation must be in (0, 1], got {self.kv_mem_util}",
        )
        require(self.block_size >= 1, f"block size must be >= 1, got {self.block_size}")
        require(self.max_batched_tokens >= 1, "max batched tokens must be >= 1")
        require(self.max_num_seqs >= 1, "max num seqs must be >= 1")
        require(self.tick_s > 0 and self.timeline_s > 0, "tick and timeline intervals must be > 0")

    @property
    def gpus(self) -> int:
        return self.instances * self.tp

    def cluster_config(self) -> ClusterConfig:
        """These settings as a plain :class:`ClusterConfig` (a subclass's extras dropped)."""
        if type(self) is ClusterConfig:
            return self
        return ClusterConfig(**{f.name: getattr(self, f.name)
                                for f in dataclasses.fields(ClusterConfig)})
