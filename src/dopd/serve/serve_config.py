"""Settings of one ``dopd serve`` deployment (:class:`ServeConfig`), from a TOML file + options.

The file holds a ``[serve]`` table whose keys are the field names below; command-line options
override it (see :func:`load_serve_config`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dopd.config import from_mapping, load_toml
from dopd.control.cluster_config import ClusterConfig
from dopd.errors import require

MODES = ("real", "emulated")
BACKENDS = ("local", "ray")
KV_TRANSPORTS = ("socket", "object_store")
KV_AUTHS = ("auto", "curve", "hmac")
DTYPES = ("float32", "float16", "bfloat16")
SELF_CALIBRATION_MODES = ("start", "background", "off")
ENGINES = ("dopd", "vllm")

REAL_KV_CACHE_MB = 64.0
REAL_MAX_NUM_SEQS = 64
REAL_MAX_BATCHED_TOKENS = 2048
"""Defaults of a real (PyTorch) worker when the deployment sets none."""


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """One deployment: model, workers, policy, execution mode, HTTP and SLO settings.

    ``model`` is ``dopd-tiny`` or a local checkpoint folder (emulated workers still load it for
    the tokenizer and KV layout). ``policy`` is a cluster-policy spec of
    :data:`dopd.control.policies.base.POLICIES` (``colocated``, ``static:P:D``, ``dopd`` ...). In
    ``emulated`` mode each step sleeps ``step_time_scale`` times the time that the latency model
    of ``perf_model`` on ``gpu`` predicts (0: steps take no time). ``kv_timeout_s`` bounds the
    wait of a decode worker for its KV before it recomputes the prompt; ``kv_lease_s`` how long
    a prefill worker keeps handed-off KV. ``api_key`` None accepts any request;
    ``admin_key`` None serves admin routes to loopback clients only; ``protect_metrics`` puts
    ``/metrics`` and ``/debug/*`` behind the API key; ``trusted_hosts`` (None: the loopback names
    when ``host`` is loopback, else any) are the Host header values served (see
    :mod:`dopd.serve.access`). ``channel_auth`` authenticates and encrypts the worker channels
    with ZMQ CURVE (:mod:`dopd.serve.channel_auth`); ``kv_auth`` ``hmac`` authenticates the KV
    sockets with an HMAC per message instead (no encryption, full bandwidth), ``auto`` takes
    ``hmac`` when every KV socket binds loopback and ``curve`` when KV crosses a network
    (:func:`dopd.serve.runtime.resolve_kv_auth`). ``ray_insecure``
    starts a local Ray instance without Ray's token authentication (see
    :mod:`dopd.serve.ray_connect`).
    ``backend`` ``local`` runs workers as processes here; ``ray`` runs each as a Ray actor
    asking for ``ray_cpus_per_instance`` CPUs and ``ray_gpus_per_instance`` GPUs, on the
    cluster at ``ray_address`` (``auto``, ``host:port`` or ``ray://host:port``; None starts a
    local Ray instance). ``kv_transport`` moves handed-off KV peer to peer over sockets or,
    with Ray, through the Ray object store (``object_store``). ``device`` places real-mode
    workers (``auto``: one GPU each, round robin over the visible GPUs, else the CPU; see
    :func:`dopd.serve.engines.resolve_device`) in ``dtype`` (None: bfloat16 or float16 on a
    GPU, float32 on the CPU).
    ``router`` places requests: a router spec of :data:`dopd.control.routing.router.ROUTERS`
    (``least-loaded``, ``length-aware:admit=off`` ...) or ``auto``, the policy's own, as in
    ``dopd simulate``; its latency predictions come from ``perf_model`` on ``gpu``.
    ``kv_cache_mb`` (MiB of the loaded model's KV), ``max_num_seqs`` and ``max_batched_tokens``
    left None are 64 MiB, 64 and 2048 in ``real`` mode; in ``emulated`` mode they are what
    ``dopd simulate`` uses for ``perf_model`` on ``gpu`` at ``kv_mem_util`` (see
    :func:`dopd.serve.engines.engine_limits`).
    ``threads`` is each worker's torch thread count; None: 1 for a small model such as
    dopd-tiny, else this machine's cores divided among the ``instances`` workers, at most 4
    (:func:`dopd.engine.threads.default_threads`).
    ``calibration`` lets the control plane (router, admission control, the policy's solver)
    learn its latency model online from the workers' observed step times
    (:mod:`dopd.serve.live_calibration`); ``model_bias`` makes that model predict ``1 +
    model_bias`` times the configured model's step times, as ``dopd simulate --model-bias``
    (the workers' emulated steps are unchanged: the belief is wrong, not the hardware).
    ``max_request_bytes`` bounds a completion request's body (413 beyond it, checked on its
    Content-Length and while it is read, before any parsing or tokenization).
    Reliability (see :mod:`dopd.serve.faults`, :mod:`dopd.serve.admission`):
    ``worker_stall_timeout_s`` is how long a worker holding work may send nothing before it is
    declared stalled (0: no watchdog); a lost worker restarts after a backoff that doubles from
    ``restart_backoff_s`` up to ``restart_backoff_max_s`` with each loss in the last
    ``restart_window_s``. ``max_queued_requests`` and ``max_queued_tokens`` (prompt tokens)
    bound what each instance holds, ``cluster_max_requests`` and ``cluster_max_tokens`` (None:
    the per-instance limit times ``instances``) the whole cluster; past them requests get 429
    with ``Retry-After``. ``http_timeout_s`` bounds the wait for a request's headers and body
    and an idle keep-alive connection; ``max_connections`` the connections served at once
    (more get 503). ``shutdown_timeout_s`` is the grace of a SIGTERM: requests still open at
    its end get an error (an SSE error event and ``[DONE]`` on a stream).
    ``fault_injection`` turns on the test-only crash hook (a prompt starting with
    :data:`dopd.serve.faults.CRASH_MARKER` crashes its worker); never in production.
    ``calibration_file`` (a fit: the JSON of ``dopd profile``, a built-in name or a CSV of
    measured steps, as ``dopd simulate --calibration``) or ``profile`` (an operator profile,
    as ``--profile``) replaces the roofline ``preset`` as the configured latency model: of the
    emulated steps and of the control plane's belief. ``self_calibration`` (real mode, when
    neither is given): ``start`` measures the engine's step times before the workers start
    and predicts with a fit of them (:mod:`dopd.serve.self_calibration`), ``background``
    measures once the workers are ready while the server already listens, ``off`` keeps the
    configured model; the measurement is killed after ``calibration_timeout_s``.
    ``save_calibration`` writes the fit to that JSON file (``calibration_file`` reads it).

    ``engine`` ``vllm`` serves with ``vllm serve`` instances instead of dopd's workers (see
    ``docs/vllm.md``): launched here (the Python of ``vllm_python`` or ``.venv-vllm``, HTTP
    ports from ``vllm_port``, NIXL side channels from ``vllm_side_port``,
    ``vllm_kv_space_gb`` of KV cache each, ``vllm_eager``: no compilation, ``vllm_args``
    appended, logs in ``vllm_log_dir``) or attached at ``vllm_urls`` (one per instance);
    ``model`` is then the checkpoint folder the front end reads its tokenizer from (and
    launched instances load), ``vllm_metrics_period_s`` the scrape period of their
    ``/metrics``, ``vllm_timeout_s`` the longest wait between two chunks of an answer,
    ``vllm_start_timeout_s`` the longest wait for an instance's ``/health`` at start and after a
    restart (a CPU instance on a busy 2-core machine takes about 100 s).
    """

    model: str = "dopd-tiny"
    instances: int = 2
    policy: str = "colocated"
    router: str = "auto"
    mode: str = "real"
    gpu: str = "a100-80gb"
    perf_model: str = "llama-3-8b"
    preset: str = "modern"
    step_time_scale: float = 1.0
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = field(default=None, repr=False)
    admin_key: str | None = field(default=None, repr=False)
    protect_metrics: bool = False
    trusted_hosts: tuple[str, ...] | None = None
    channel_auth: bool = True
    kv_auth: str = "auto"
    ray_insecure: bool = False
    slo_ttft_s: float = 1.0
    slo_tpot_s: float = 0.1
    attainment: float = 0.9
    max_model_len: int | None = None
    kv_cache_mb: float | None = None
    max_num_seqs: int | None = None
    max_batched_tokens: int | None = None
    kv_mem_util: float = 0.9
    kv_timeout_s: float = 5.0
    kv_lease_s: float = 10.0
    tick_s: float = 1.0
    default_max_tokens: int = 256
    restart_workers: bool = True
    worker_start_timeout_s: float = 120.0
    shutdown_timeout_s: float = 10.0
    seed: int = 0
    backend: str = "local"
    ray_address: str | None = None
    kv_transport: str = "socket"
    ray_cpus_per_instance: float = 1.0
    ray_gpus_per_instance: float = 0.0
    device: str = "auto"
    dtype: str | None = None
    threads: int | None = None
    calibration: bool = True
    model_bias: float = 0.0
    max_request_bytes: int = 8 * 2**20
    worker_stall_timeout_s: float = 10.0
    restart_window_s: float = 60.0
    restart_backoff_s: float = 0.5
    restart_backoff_max_s: float = 30.0
    max_queued_requests: int = 256
    max_queued_tokens: int = 524_288
    cluster_max_requests: int | None = None
    cluster_max_tokens: int | None = None
    http_timeout_s: float = 10.0
    max_connections: int = 1024
    fault_injection: bool = False
    calibration_file: str | None = None
    profile: str | None = None
    self_calibration: str = "start"
    save_calibration: str | None = None
    calibration_timeout_s: float = 120.0
    engine: str = "dopd"
    vllm_urls: tuple[str, ...] = ()
    vllm_python: str | None = None
    vllm_port: int = 8100
    vllm_side_port: int = 5600
    vllm_kv_space_gb: int = 1
    vllm_eager: bool = True
    vllm_args: tuple[str, ...] = ()
    vllm_metrics_period_s: float = 1.0
    vllm_log_dir: str | None = None
    vllm_timeout_s: float = 120.0
    vllm_start_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        require(self.instances >= 1, f"instances must be >= 1, got {self.instances}")
        require(self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        require(self.policy.strip() != "", "policy is empty")
        require(self.router.strip() != "", "router is empty")
        require(0 <= self.port <= 65535, f"port must be in [0, 65535], got {self.port}")
        require(math.isfinite(self.step_time_scale) and self.step_time_scale >= 0,
                f"step_time_scale must be >= 0, got {self.step_time_scale}")
        for name in ("kv_timeout_s", "kv_lease_s", "tick_s", "worker_start_timeout_s",
                     "shutdown_timeout_s", "slo_ttft_s", "slo_tpot_s", "kv_cache_mb",
                     "restart_window_s", "restart_backoff_s", "restart_backoff_max_s",
                     "http_timeout_s"):
            value = getattr(self, name)
            require(value is None or (math.isfinite(value) and value > 0),
                    f"{name} must be > 0, got {value}")
        require(0 < self.kv_mem_util <= 1,
                f"kv_mem_util must be in (0, 1], got {self.kv_mem_util}")
        require(self.max_model_len is None or self.max_model_len >= 2,
                f"max_model_len must be >= 2, got {self.max_model_len}")
        require(self.default_max_tokens >= 1, "default_max_tokens must be >= 1")
        require(all(v is None or v >= 1 for v in (self.max_num_seqs, self.max_batched_tokens)),
                "max_num_seqs and max_batched_tokens must be >= 1")
        require(math.isfinite(self.model_bias) and -0.9 <= self.model_bias <= 3.0,
                f"model_bias must be in [-0.9, 3], got {self.model_bias}")
        require(self.max_request_bytes >= 1024,
                f"max_request_bytes must be >= 1024, got {self.max_request_bytes}")
        require(math.isfinite(self.worker_stall_timeout_s) and self.worker_stall_timeout_s >= 0,
                f"worker_stall_timeout_s must be >= 0, got {self.worker_stall_timeout_s}")
        for name in ("max_queued_requests", "max_queued_tokens", "cluster_max_requests",
                     "cluster_max_tokens", "max_connections"):
            value = getattr(self, name)
            require(value is None or value >= 1, f"{name} must be >= 1, got {value}")
        require(self.threads is None or self.threads >= 1,
                f"threads must be >= 1, got {self.threads}")
        require(self.api_key is None or self.api_key != "", "api_key must not be empty")
        require(self.admin_key is None or self.admin_key != "", "admin_key must not be empty")
        require(self.trusted_hosts is None or (len(self.trusted_hosts) > 0 and all(
            isinstance(h, str) and h.strip() != "" for h in self.trusted_hosts)),
            "trusted_hosts must be a non-empty list of host names (or * for any)")
        require(bool(re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device)),
                f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        require(self.dtype is None or self.dtype in DTYPES,
                f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        require(self.backend in BACKENDS,
                f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        require(self.kv_transport in KV_TRANSPORTS, f"kv_transport must be one of "
                f"{', '.join(KV_TRANSPORTS)}, got {self.kv_transport!r}")
        require(self.kv_auth in KV_AUTHS,
                f"kv_auth must be one of {', '.join(KV_AUTHS)}, got {self.kv_auth!r}")
        require(self.kv_transport == "socket" or self.backend == "ray",
                "kv_transport object_store needs backend ray")
        require(self.ray_address is None or self.backend == "ray",
                "ray_address needs backend ray")
        require(math.isfinite(self.ray_cpus_per_instance) and self.ray_cpus_per_instance >= 0
                and math.isfinite(self.ray_gpus_per_instance) and self.ray_gpus_per_instance >= 0,
                "ray_cpus_per_instance and ray_gpus_per_instance must be >= 0")
        require(self.self_calibration in SELF_CALIBRATION_MODES, f"self_calibration must be "
                f"one of {', '.join(SELF_CALIBRATION_MODES)}, got {self.self_calibration!r}")
        require(self.calibration_file is None or self.profile is None,
                "give a calibration file or a latency profile, not both")
        require(math.isfinite(self.calibration_timeout_s) and self.calibration_timeout_s > 0,
                f"calibration_timeout_s must be > 0, got {self.calibration_timeout_s}")
        if self.save_calibration is not None:
            p = Path(self.save_calibration)
            require(p.suffix.lower() == ".json" and not p.is_dir(),
                    f"save_calibration must be a .json file, got {self.save_calibration!r}")
        require(self.engine in ENGINES,
                f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        require(not self.vllm_urls or self.engine == "vllm", "vllm_urls need engine vllm")
        require(self.engine == "dopd" or self.backend == "local",
                "engine vllm runs its own instances: no --backend ray")
        require(not self.vllm_urls or len(self.vllm_urls) == self.instances,
                f"{len(self.vllm_urls)} vLLM URLs for {self.instances} instances")
        require(all(u.startswith(("http://", "https://")) for u in self.vllm_urls),
                "vllm_urls must be http:// or https:// URLs")
        require(1 <= self.vllm_port <= 65535 and 1 <= self.vllm_side_port <= 65535,
                "vllm_port and vllm_side_port must be in [1, 65535]")
        require(self.vllm_kv_space_gb >= 1, "vllm_kv_space_gb must be >= 1")
        for name in ("vllm_metrics_period_s", "vllm_timeout_s", "vllm_start_timeout_s"):
            value = getattr(self, name)
            require(math.isfinite(value) and value > 0, f"{name} must be > 0, got {value}")
        if self.ray_address is not None:
            from dopd.serve.ray_connect import check_address

            check_address(self.ray_address)

    def cluster_config(self) -> ClusterConfig:
        """The one :class:`~dopd.control.cluster_config.ClusterConfig` of this deployment: the
        instance the policy, the router, admission control and the workers all plan with and
        run. Batch limits left None are :data:`REAL_MAX_BATCHED_TOKENS` /
        :data:`REAL_MAX_NUM_SEQS` in real mode and the simulator's (``ClusterConfig``'s
        defaults) in emulated mode; the latency model is ``perf_model`` on ``gpu`` (or
        ``calibration_file`` / ``profile``)."""
        real = self.mode == "real"
        base = ClusterConfig()
        tokens = self.max_batched_tokens
        if tokens is None:
            tokens = REAL_MAX_BATCHED_TOKENS if real else base.max_batched_tokens
        seqs = self.max_num_seqs
        if seqs is None:
            seqs = REAL_MAX_NUM_SEQS if real else base.max_num_seqs
        return ClusterConfig(
            model=self.perf_model, gpu=self.gpu, preset=self.preset,
            calibration=self.calibration_file, profile=self.profile, instances=self.instances,
            kv_mem_util=self.kv_mem_util, max_batched_tokens=tokens, max_num_seqs=seqs,
            tick_s=self.tick_s, router=self.router, online_calibration=self.calibration)

    @property
    def time_scale(self) -> float:
        """Wall seconds per modeled second: ``step_time_scale`` in emulated mode (when > 0),
        else 1. The SLOs and the router's predictions are wall-clock; the cluster policy plans
        in modeled seconds, as in the simulator."""
        scaled = self.mode == "emulated" and self.step_time_scale > 0
        return self.step_time_scale if scaled else 1.0

    @property
    def measures_calibration(self) -> bool:
        """Real mode with ``self_calibration`` on and no ``calibration_file`` or ``profile``:
        the deployment measures its engine's step times (see the class docstring)."""
        return (self.mode == "real" and self.engine == "dopd"
                and self.self_calibration != "off"
                and self.calibration_file is None and self.profile is None)


def load_serve_config(path: str | Path | None, overrides: Mapping[str, Any]) -> ServeConfig:
    """Defaults < the ``[serve]`` table of ``path`` (TOML) < ``overrides`` (None values skipped).

    Unknown keys or values of the wrong type raise DopdError naming the key.
    """
    data: dict[str, Any] = {}
    if path is not None:
        raw = load_toml(path)
        require(set(raw) <= {"serve"}, f"{path}: expected only a [serve] table, got "
                f"{', '.join(sorted(set(raw) - {'serve'}))}")
        data = dict(raw.get("serve", {}))
    config = from_mapping(ServeConfig, data, "serve")
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(config, **given) if given else config
