"""The runtime of ``dopd serve``: what runs behind the HTTP app. It builds, from one
:class:`~dopd.serve.serve_config.ServeConfig`, the tokenizer, the cluster policy, the workers
(:class:`~dopd.serve.cluster.WorkerCluster`), the dispatcher, the controller, the learned belief
and the metrics, and starts, self-calibrates, drains and stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dopd.control.cluster_config import ClusterConfig
from dopd.control.cluster_models import build_models
from dopd.control.flow.instances import scheduler_config
from dopd.control.policies.base import ClusterPolicy, PolicyContext, make_policy
from dopd.engine.model import TINY_NAME, Tokenizer, tiny_tokenizer
from dopd.engine.sequence import SchedulerConfig
from dopd.errors import DopdError, require
from dopd.perf.base import LatencyModel
from dopd.serve.access import AccessPolicy, default_trusted_hosts, is_loopback
from dopd.serve.admission import AdmissionLimits
from dopd.serve.cluster import LocalCluster, WorkerCluster
from dopd.serve.controller import Controller
from dopd.serve.dispatch import Dispatcher
from dopd.serve.engines import EngineSpec
from dopd.serve.faults import FaultPolicy
from dopd.serve.in_flight import Event
from dopd.serve.live_calibration import LiveCalibration, build_live_belief
from dopd.serve.live_routing import live_router
from dopd.serve.metrics import ServeMetrics
from dopd.serve.self_calibration import describe_fit, load_fit, measure_fit, save_fit
from dopd.serve.serve_config import ServeConfig
from dopd.types import SLO, Role

if TYPE_CHECKING:
    from dopd.serve.vllm.fleet import VllmFleet


def load_tokenizer(model: str) -> tuple[str, Tokenizer]:
    """(served model name, tokenizer) of ``dopd-tiny`` or a checkpoint folder."""
    if model == TINY_NAME:
        return TINY_NAME, tiny_tokenizer()
    path = Path(model)
    require(path.is_dir(), f"unknown model {model!r}: not {TINY_NAME} and no such folder")
    return path.resolve().name, Tokenizer.from_folder(path)


def build_policy(config: ServeConfig, latency: LatencyModel | None = None,
                 cluster: ClusterConfig | None = None) -> ClusterPolicy:
    """The cluster policy of ``config.policy``, built as the simulator builds it, for the
    deployment's instances ``cluster`` (None: ``config.cluster_config()``), predicting with
    ``latency`` (the deployment's belief; None: the configured model), against the SLOs in
    its modeled time (:attr:`ServeConfig.time_scale`)."""
    cluster = config.cluster_config() if cluster is None else cluster
    if latency is None:
        latency = build_models(cluster).latency
    scale = config.time_scale
    slo = SLO(config.slo_ttft_s / scale, config.slo_tpot_s / scale, config.attainment)
    blocks = (latency.kv_capacity_tokens or 2**20) // cluster.block_size
    policy = make_policy(config.policy, PolicyContext(cluster, latency, slo, config.seed, blocks))
    require(isinstance(policy, ClusterPolicy),
            f"policy {config.policy!r} searches in hindsight; it cannot serve live")
    assert isinstance(policy, ClusterPolicy)
    return policy


def resolve_kv_auth(config: ServeConfig) -> str:
    """``config.kv_auth``, with ``auto`` resolved: ``hmac`` when every KV socket binds loopback
    (the local backend; a local Ray instance behind a loopback host), where encryption would
    cost bandwidth and hide nothing from an unprivileged user; ``curve`` when KV crosses a
    network."""
    if config.kv_auth != "auto":
        return config.kv_auth
    local = config.backend == "local" or (config.ray_address is None and is_loopback(config.host))
    return "hmac" if local else "curve"


def build_cluster(config: ServeConfig, spec: EngineSpec,
                  roles: list[Role]) -> WorkerCluster | VllmFleet:
    """The workers of ``config.backend``: local processes or Ray actors. ``instances`` is the
    budget: an elastic policy may start fewer and add or remove instances up to it. With Ray
    this connects to the cluster now, so a bad address fails before the server starts."""
    n = config.instances
    require(len(roles) <= n, f"policy {config.policy} starts {len(roles)} instances, more "
            f"than the budget of {n}")
    if config.engine == "vllm":
        from dopd.serve.vllm.fleet import build_vllm_fleet

        return build_vllm_fleet(config, roles)
    if config.backend == "ray":
        from dopd.serve.ray_cluster import RayCluster

        cluster = RayCluster(spec, roles, address=config.ray_address,
                             cpus_per_instance=config.ray_cpus_per_instance,
                             gpus_per_instance=config.ray_gpus_per_instance,
                             kv_transport=config.kv_transport, restart=config.restart_workers,
                             start_timeout_s=config.worker_start_timeout_s, budget=n,
                             channel_auth=config.channel_auth, kv_auth=resolve_kv_auth(config),
                             loopback=is_loopback(config.host), insecure=config.ray_insecure)
        cluster.connect()
        return cluster
    # local workers all run here: their sockets bind loopback whatever the HTTP host
    return LocalCluster(spec, roles, restart=config.restart_workers,
                        start_timeout_s=config.worker_start_timeout_s, host="127.0.0.1",
                        channel_auth=config.channel_auth, kv_auth=resolve_kv_auth(config))


class ServeRuntime:
    """Everything behind the HTTP layer of one deployment; :meth:`start` and :meth:`stop` run
    in the server's event loop."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.model_name, self.tokenizer = load_tokenizer(config.model)
        # the one instance model of this deployment: policy, router, admission and workers
        self.cluster_config = cluster = config.cluster_config()
        self.belief = build_live_belief(config, cluster)
        self.calibration = LiveCalibration.of(config, self.belief)
        if config.calibration_file is not None:
            self.calibration.self_calibration.status = "loaded"
            # another form (a DistServe fit, a CSV) has nothing more to show
            with contextlib.suppress(DopdError):
                self.calibration.self_calibration.fit = load_fit(config.calibration_file)
        self.policy = build_policy(config, self.belief, cluster)
        self.slo = SLO(config.slo_ttft_s, config.slo_tpot_s, config.attainment)
        self.router = live_router(config, self.policy.router, belief=self.belief,
                                  cluster=cluster)
        order = scheduler_config(self.policy, self.router.scheduler_config(SchedulerConfig()))
        roles = list(self.policy.initial_roles(config.instances))
        spec = EngineSpec(model=config.model, role=roles[0], mode=config.mode,
                          max_model_len=config.max_model_len, kv_cache_mb=config.kv_cache_mb,
                          max_num_seqs=cluster.max_num_seqs,
                          max_batched_tokens=cluster.max_batched_tokens,
                          kv_timeout_s=config.kv_timeout_s, kv_lease_s=config.kv_lease_s,
                          perf_model=cluster.model, gpu=cluster.gpu, preset=cluster.preset,
                          kv_mem_util=cluster.kv_mem_util, kv_link=cluster.kv_link,
                          step_time_scale=config.step_time_scale, seed=config.seed,
                          device=config.device, dtype=config.dtype,
                          queue_order=order.queue_order, aging_s=order.aging_s,
                          max_passes=order.max_passes,
                          mixed_prefill_tokens=order.mixed_prefill_tokens,
                          mixed_chunk_table=order.mixed_chunk_table,
                          threads=worker_threads(config),
                          sharers=config.instances, calibration=cluster.calibration,
                          profile=cluster.profile)
        self.spec = spec
        self.cluster = build_cluster(config, spec, roles)
        self.metrics = ServeMetrics()
        self.access = AccessPolicy(
            config.api_key, config.admin_key, config.protect_metrics,
            config.trusted_hosts or default_trusted_hosts(config.host))
        instances = self.cluster.instances
        self.dispatcher = Dispatcher(instances, lambda iid: instances[iid].kv_addr,  # type: ignore[arg-type]
                                     self.router)
        self.controller = Controller(self.policy, instances, self.dispatcher,  # type: ignore[arg-type]
                                     self.metrics, tick_s=config.tick_s,
                                     scaler=self.cluster if config.engine == "dopd" else None,
                                     budget=config.instances, slo=self.slo,
                                     time_scale=config.time_scale)
        self.dispatcher.observers = [self.metrics, self.controller, self.calibration]
        self.cluster.listener = self.dispatcher.on_event
        self.cluster.on_crash = self.dispatcher.on_crash
        self.cluster.holding = self.dispatcher.holding
        self.cluster.on_tick = self.dispatcher.pump
        self.cluster.faults = FaultPolicy(config.worker_stall_timeout_s, config.restart_window_s,
                                          config.restart_backoff_s, config.restart_backoff_max_s,
                                          config.fault_injection)
        self.dispatcher.limits = AdmissionLimits(
            config.max_queued_requests, config.max_queued_tokens, config.cluster_max_requests,
            config.cluster_max_tokens, config.instances)
        self.cluster.step_listener = self.calibration.observe
        self._loop_task: asyncio.Task[None] | None = None
        self._calibration_task: asyncio.Task[None] | None = None

    @property
    def max_model_len(self) -> int:
        return self.cluster.max_model_len

    async def start(self, log: Callable[[str], None] | None = None) -> None:
        """Start the workers (``log`` gets a line as each becomes ready) and the controller."""
        total = len(self.cluster.initial_roles)
        measure = self.config.measures_calibration
        if measure and self.config.self_calibration == "start":
            await self.self_calibrate(log)
        if log is not None:
            log(f"starting {total} {self.config.mode} worker(s) ...")
            ready = [0]

            def on_ready(iid: int, seconds: float) -> None:
                ready[0] += 1
                log(f"worker {iid} ready ({ready[0]}/{total}) after {seconds:.1f} s")

            self.cluster.on_ready = on_ready
        try:
            await self.cluster.start()
        finally:
            self.cluster.on_ready = None
        sizes = [h.stats.kv_total_blocks for h in self.cluster.instances.values()
                 if h.stats.kv_total_blocks]
        if sizes:  # the router's KV watermark from the workers' real cache size
            self.router = live_router(self.config, self.policy.router, kv_blocks=min(sizes),
                                      belief=self.belief, cluster=self.cluster_config)
            self.dispatcher.router = self.router
        if self.controller.scaler is not None:
            for seconds in self.cluster.cold_starts:
                self.controller.feed_cold_start(seconds)
        self.controller.t0 = time.monotonic()
        self._loop_task = asyncio.create_task(self.controller.run())
        if measure and self.config.self_calibration == "background":
            self._calibration_task = asyncio.create_task(self.self_calibrate(log))

    async def self_calibrate(self, log: Callable[[str], None] | None = None) -> None:
        """Measure the engine's step times and predict with their fit from now on
        (:mod:`dopd.serve.self_calibration`); on failure the belief stays the configured model
        and the status says why. ``log`` gets a line when it starts and ends."""
        say = log or (lambda line: None)
        state = self.calibration.self_calibration
        state.status = "measuring"
        say("self-calibration: measuring the engine's step times ...")
        stop = threading.Event()
        spec = dataclasses.replace(self.spec, role=Role.MIXED, index=0, name="self-calibration")
        try:
            fit = await asyncio.to_thread(measure_fit, spec, None,
                                          self.config.calibration_timeout_s, stop)
        except DopdError as exc:
            state.status, state.error = "failed", str(exc)
            say(f"self-calibration failed, predicting with {self.belief.base.name}: {exc}")
            return
        finally:
            stop.set()
        device = (fit.document.get("measured_on") or {}).get("device", "?")
        self.calibration.use_fit(fit, "fitted",
                                 f"self-calibration of {self.model_name} on {device}")
        say(f"self-calibration: {describe_fit(fit)}")
        if self.config.save_calibration is not None:
            try:
                save_fit(fit, self.config.save_calibration)
                state.saved_to = self.config.save_calibration
                say(f"self-calibration saved to {self.config.save_calibration}")
            except OSError as exc:
                state.error = f"could not save to {self.config.save_calibration}: {exc}"
                say(state.error)

    async def drain(self, grace_s: float) -> None:
        """Stop admitting, let in-flight requests finish for up to ``grace_s``, then end every
        one still open with a 503 error event (its handler writes it and returns)."""
        self.dispatcher.admitting = False
        if self._calibration_task is not None:
            self._calibration_task.cancel()
            await asyncio.gather(self._calibration_task, return_exceptions=True)
        deadline = time.monotonic() + grace_s
        while self.dispatcher.tracked and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for rid in list(self.dispatcher.tracked):
            t = self.dispatcher.tracked[rid]
            self.dispatcher.abort(rid, "server shutdown")
            t.queue.put_nowait(Event("error", status=503, message=f"the server is shutting "
                                     f"down (grace of {grace_s:g} s over)"))

    async def stop(self) -> None:
        """Drain (bounded by the grace), stop the workers."""
        await self.drain(self.config.shutdown_timeout_s)
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        await self.controller.close()
        await self.cluster.stop(self.config.shutdown_timeout_s)


def worker_threads(config: ServeConfig) -> int | None:
    """Torch threads of each worker: ``config.threads``; else None (each worker picks its own
    from its model and the cores it shares) for local workers, and a Ray actor's CPUs."""
    if config.threads is not None or config.backend == "local":
        return config.threads
    return max(1, int(config.ray_cpus_per_instance))
