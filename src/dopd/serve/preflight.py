"""Checks ``dopd serve`` runs before it starts any worker (no torch, fastapi or zmq imported).

:func:`bind_listener` takes the HTTP port at once (the server later serves on that very socket),
so a bad ``--host`` or a port in use fails in a second with one line, before "listening" is
printed. :func:`check_instances` bounds the worker count by this machine's memory and cores,
from :func:`worker_memory_bytes`. :func:`check_devices` rejects a GPU that torch does not see.
Each raises :class:`DopdError`.
"""

from __future__ import annotations

import errno
import math
import socket
from pathlib import Path

from dopd.engine.threads import available_cores, check_device
from dopd.errors import DopdError, require
from dopd.serve.serve_config import ServeConfig

WORKER_RUNTIME_BYTES = 320 * 2**20
"""Resident memory of one worker before its model: Python, PyTorch, ZMQ and the engine (a
dopd-tiny worker measured about 320 MB on this project's 2-core machine)."""

REAL_KV_CACHE_BYTES = 64 * 2**20
"""A real-mode worker's KV cache when ``kv_cache_mb`` is not set (see
:func:`dopd.serve.engines.engine_limits`)."""

TINY_WEIGHT_BYTES = 12 * 2**20
"""dopd-tiny's weights in float32 (2.7 M parameters)."""

WORKERS_PER_CORE = 4
"""Most local workers per core: each is a process with its own engine loop and PyTorch, which
takes 1-2 CPU-seconds to start; past this they start slowly and starve each other."""

MEMORY_SHARE = 0.8
"""Share of the available memory the workers may take together (the front end and the rest of
the machine keep the remainder)."""


def bind_listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (``port`` 0: a free one) with SO_REUSEADDR, as
    uvicorn binds it. DopdError when the host is not an address of this machine or the port is
    in use or not allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise DopdError(f"--host {host}: not a valid address ({reason})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise DopdError(f"port {port} on {host} is already in use (another server?); "
                            "pick another with --port") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise DopdError(f"--host {host} is not an address of this machine") from None
        raise DopdError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return sock


def available_memory_bytes() -> int | None:
    """Memory available to new processes (``MemAvailable`` of /proc/meminfo); None where
    unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _weight_bytes(config: ServeConfig) -> int:
    if config.model == "dopd-tiny":
        return TINY_WEIGHT_BYTES
    files = list(Path(config.model).glob("*.safetensors"))
    on_disk = sum(f.stat().st_size for f in files)
    # checkpoints are stored in 16 bits; real-mode CPU workers default to float32
    widen = 2 if config.mode == "real" and config.dtype in (None, "float32") else 1
    return on_disk * widen


def worker_memory_bytes(config: ServeConfig) -> int:
    """Estimated host memory of one worker: the runtime, its weights in host memory (real mode
    on the CPU; emulated workers and GPU workers keep only the runtime and the tokenizer here)
    and its KV cache (real mode on the CPU; emulated KV is allocated lazily)."""
    on_cpu = config.mode == "real" and not config.device.startswith("cuda")
    if not on_cpu:
        return WORKER_RUNTIME_BYTES + (TINY_WEIGHT_BYTES if config.mode == "emulated" else 0)
    kv = (REAL_KV_CACHE_BYTES if config.kv_cache_mb is None
          else int(config.kv_cache_mb * 2**20))
    return WORKER_RUNTIME_BYTES + _weight_bytes(config) + kv


def max_local_workers(config: ServeConfig, cores: int, memory: int | None) -> tuple[int, str]:
    """The most workers this machine can run for ``config`` and why (the tighter of the core
    bound and the memory bound)."""
    by_cores = WORKERS_PER_CORE * cores
    reason = (f"{WORKERS_PER_CORE} worker processes per core on {cores} cores (each runs its own "
              "engine loop and PyTorch)")
    if memory is None:
        return by_cores, reason
    each = worker_memory_bytes(config)
    by_memory = max(1, math.floor(MEMORY_SHARE * memory / each))
    if by_memory < by_cores:
        return by_memory, (f"each worker needs about {each / 2**20:.0f} MiB (runtime, weights, "
                           f"KV) and {MEMORY_SHARE:.0%} of the {memory / 2**30:.1f} GiB "
                           "available is the workers' share")
    return by_cores, reason


def check_instances(config: ServeConfig) -> None:
    """DopdError when ``config.instances`` workers would not fit this machine (local backend,
    or Ray started here); a Ray cluster given by address places its actors itself."""
    if (config.backend == "ray" and config.ray_address is not None) or config.vllm_urls:
        return
    most, reason = max_local_workers(config, available_cores(), available_memory_bytes())
    require(config.instances <= most,
            f"--instances {config.instances} is over this machine's limit of {most}: {reason}; "
            "lower --instances, or use --backend ray --ray-address on a cluster")


def check_devices(config: ServeConfig) -> None:
    """DopdError when real-mode workers ask for a GPU (``cuda``, ``cuda:N``) torch does not see
    here (a Ray cluster's GPUs are checked on its nodes)."""
    if config.mode != "real" or not config.device.startswith("cuda"):
        return
    if config.backend == "ray" and config.ray_address is not None:
        return
    check_device(config.device)
