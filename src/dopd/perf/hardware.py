"""Hardware catalog: the accelerator figures the latency and KV-transfer models need.

All figures are vendor datasheet values for one GPU, taken from NVIDIA's A100, H100, H200 and
L40S datasheets:

- ``flops``: *dense* BF16/FP16 Tensor Core throughput (the datasheets' headline numbers marked
  "with sparsity" are twice these and are not used);
- ``hbm_Bps``: peak memory bandwidth;
- ``memory_bytes``: memory capacity; the datasheets' "80GB" etc. are binary gigabytes (GiB), which
  is what ``nvidia-smi`` reports (81920 MiB on an A100-80GB);
- ``link_Bps``: intra-node GPU-to-GPU bandwidth *per direction*: NVLink's datasheet figure
  (600 GB/s on A100, 900 GB/s on H100/H200) is the bidirectional aggregate, so half of it is stored;
  the L40S has no NVLink and uses PCIe Gen4 x16 (64 GB/s bidirectional);
- ``nic_Bps``: inter-node bandwidth per GPU, one NIC per GPU as in the DGX/HGX reference designs:
  HDR InfiniBand 200 Gb/s for A100 systems, NDR 400 Gb/s for H100/H200 systems. The L40S figure
  (200 Gb/s Ethernet per GPU) is an estimate of a typical PCIe server, not a datasheet value.

Look-ups go through :data:`GPUS` (case-insensitive; unknown names raise ``DopdError`` listing the
known ones); :func:`get_gpu` also passes a :class:`HardwareSpec` through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from dopd.errors import require
from dopd.registry import Registry

GiB = 1024**3


@dataclass(frozen=True, slots=True)
class HardwareSpec:
    """One GPU: dense BF16 FLOP/s, HBM B/s, memory bytes, per-direction link B/s, NIC B/s."""

    name: str
    flops: float
    hbm_Bps: float
    memory_bytes: int
    link_Bps: float
    nic_Bps: float

    def __post_init__(self) -> None:
        for field_name in ("flops", "hbm_Bps", "memory_bytes", "link_Bps", "nic_Bps"):
            value = getattr(self, field_name)
            require(value > 0, f"GPU {self.name!r}: {field_name} must be > 0, got {value}")


GPUS: Registry[HardwareSpec] = Registry("GPU")


def _add(spec: HardwareSpec, *aliases: str) -> None:
    GPUS.register(spec.name, spec)
    for alias in aliases:
        GPUS.register(alias, spec)


_add(HardwareSpec("a100-40gb", 312e12, 1555e9, 40 * GiB, 300e9, 25e9), "a100-sxm-40gb")
_add(HardwareSpec("a100-80gb", 312e12, 2039e9, 80 * GiB, 300e9, 25e9), "a100-sxm-80gb", "a100")
_add(HardwareSpec("h100-sxm", 989e12, 3350e9, 80 * GiB, 450e9, 50e9), "h100", "h100-80gb")
_add(HardwareSpec("h200", 989e12, 4800e9, 141 * GiB, 450e9, 50e9), "h200-sxm", "h200-141gb")
_add(HardwareSpec("l40s", 362e12, 864e9, 48 * GiB, 32e9, 25e9))


def get_gpu(gpu: str | HardwareSpec) -> HardwareSpec:
    """Return the catalog entry named ``gpu`` (case-insensitive) or ``gpu`` itself if a spec."""
    if isinstance(gpu, HardwareSpec):
        return gpu
    return GPUS.get(gpu)


def gpu_names() -> list[str]:
    """Canonical GPU names (aliases excluded), sorted."""
    return sorted({spec.name for _, spec in GPUS.items()})
