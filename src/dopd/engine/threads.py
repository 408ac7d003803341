"""Default torch thread counts and device checks, without importing torch at module load.

torch's default is one intra-op thread per core. On a busy machine (or with several engine
processes side by side) its threads wait for each other at every operator, which made a 32-token
``dopd generate`` of dopd-tiny 10-80x slower than with one thread. :func:`default_threads` picks
a count from the model's size, the cores this process may use and how many processes share them.
"""

from __future__ import annotations

import os
import re

from dopd.errors import require

SMALL_MODEL_PARAMS = 50_000_000
"""Below this many parameters one thread is fastest: the operators are too small to split
(dopd-tiny, 2.7 M parameters: 0.12 s for 32 tokens on 1 thread, 0.56 s on 2, on 2 cores)."""

MAX_DEFAULT_THREADS = 4
"""Most threads chosen by default; ``--threads`` may ask for more."""

DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def busy_cores() -> int:
    """Cores busy with other work: the 1-minute load average, rounded (0 where unknown)."""
    try:
        return round(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0


def default_threads(params: int, cores: int, sharers: int = 1, busy: int = 0) -> int:
    """Torch threads for one engine process of a model with ``params`` parameters: 1 for a small
    model (below :data:`SMALL_MODEL_PARAMS`), else the idle cores (``cores - busy``) divided
    among ``sharers`` processes, within ``[1, MAX_DEFAULT_THREADS]``."""
    if params < SMALL_MODEL_PARAMS:
        return 1
    idle = max(1, cores - max(0, busy))
    return max(1, min(MAX_DEFAULT_THREADS, idle // max(1, sharers)))


def approx_params(hidden: int, intermediate: int, layers: int, vocab: int, kv_dim: int) -> int:
    """Parameters of a Llama-style decoder: attention (q, o and k, v of ``kv_dim``), a gated MLP
    per layer, and input and output embeddings."""
    per_layer = 2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * intermediate
    return layers * per_layer + 2 * vocab * hidden


def check_device(device: str, option: str = "--device") -> None:
    """DopdError unless ``device`` is ``cpu``, ``cuda`` or ``cuda:N`` and, for a GPU, torch sees
    it (imports torch only then)."""
    require(bool(DEVICE_PATTERN.fullmatch(device)),
            f"{option} must be cpu, cuda or cuda:N, got {device!r}")
    if device == "cpu":
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    require(count > 0, f"{option} {device}: torch sees no GPU on this machine (use cpu)")
    index = int(device.partition(":")[2] or 0)
    require(index < count, f"{option} {device}: torch sees {count} GPU(s)")
