"""A fleet of ``vllm serve`` instances behind dopd's front end (:class:`VllmFleet`).

It stands where :class:`~dopd.serve.cluster.WorkerCluster` stands for dopd's own workers: the
runtime reads its ``instances`` (:class:`~dopd.serve.vllm.instance.VllmInstance`, each an
:class:`~dopd.serve.cluster.InstanceHandle`), gives it the dispatcher's ``listener``,
``on_crash``, ``holding`` and ``on_tick``, and starts and stops it. Instances are launched
(``vllm serve`` processes of :class:`~dopd.serve.vllm.launch.LaunchSpec`, restarted after a
crash with the backoff of :class:`~dopd.serve.faults.RestartBackoff`) or attached by URL
(marked down after ``PROBES_LOST`` failed ``/health`` probes in a row, up again when it
answers). Start-up waits for every
``/health`` with a timeout and fails with one line (a launched instance's last log line
when it exited). Every ``metrics_period_s`` each instance's ``/metrics`` is scraped into its
stats (running and waiting requests, KV cache blocks in use, mean decode step), which the
router's books, the controller's view and the dashboard read.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from dopd.errors import DopdError, require
from dopd.serve.faults import FaultPolicy, RestartBackoff
from dopd.serve.messages import Event
from dopd.serve.vllm.instance import CallLimits, VllmInstance
from dopd.serve.vllm.launch import LaunchSpec
from dopd.serve.vllm.prom import MetricsReading
from dopd.types import InstanceState, Role

MONITOR_INTERVAL_S = 0.1
HEALTH_TIMEOUT_S = 2.0
PROBES_LOST = 3
"""Consecutive failed ``/health`` probes (one a second) that mark an attached instance down: a
busy server answering one probe late is not lost."""
_LOG_LINES = 40


class _Process:
    """A launched ``vllm serve`` and the tail of its log (for one-line errors)."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path | None) -> None:
        self.tail: deque[str] = deque(maxlen=_LOG_LINES)
        self.log = log
        out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        if log is not None:
            out.close()  # type: ignore[union-attr]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def detail(self) -> str:
        code = self.proc.poll()
        last = ""
        if self.log is not None and self.log.is_file():
            lines = [ln for ln in self.log.read_text(errors="replace").splitlines()
                     if ln.strip()]
            errs = [ln for ln in lines if "Error" in ln or "error" in ln]
            last = (errs or lines or [""])[-1].strip()[:240]
        return f"exit code {code}" + (f"; last log line: {last}" if last else "")

    def terminate(self, grace_s: float = 5.0) -> None:
        """SIGTERM to the process group (vLLM's engine core is a child), SIGKILL after
        ``grace_s``."""
        import os
        import signal

        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(2.0)


class VllmFleet:
    """The vLLM instances of one deployment: launched from ``launches`` (with ``python``, logs
    in ``log_dir``) or attached at ``urls``; ``roles`` are their initial roles. See the module
    docstring."""

    def __init__(self, roles: list[Role], *, launches: list[LaunchSpec] | None = None,
                 urls: list[str] | None = None, python: str = "", restart: bool = True,
                 start_timeout_s: float = 300.0, metrics_period_s: float = 1.0,
                 limits: CallLimits | None = None, log_dir: Path | None = None) -> None:
        require(bool(launches) != bool(urls), "a vLLM fleet is either launched or attached")
        n = len(launches or urls or [])
        require(len(roles) == n, f"{len(roles)} roles for {n} vLLM instances")
        self.launches = launches or []
        self.urls = urls or []
        self.python = python
        self.initial_roles = list(roles)
        self.restart = restart
        self.start_timeout_s = start_timeout_s
        self.metrics_period_s = metrics_period_s
        self.limits = limits or CallLimits()
        self.log_dir = log_dir
        self.instances: dict[int, VllmInstance] = {}
        self.listener: Callable[[int, Event], None] = lambda iid, ev: None
        self.on_crash: Callable[[int], None] = lambda iid: None
        self.on_ready: Callable[[int, float], None] | None = None
        self.holding: Callable[[int], int] = lambda iid: 0
        self.on_tick: Callable[[], None] = lambda: None
        self.step_listener: Any = None
        self.faults = FaultPolicy()
        self.max_model_len = 0
        self.cold_starts: list[float] = []
        self.restarting: set[int] = set()
        self.stalls = 0
        self.losses = 0
        self.stopping = False
        self.session: aiohttp.ClientSession | None = None
        self._readings: dict[int, MetricsReading] = {}
        self._missed: dict[int, int] = {}
        self._backoff: dict[int, RestartBackoff] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def attached(self) -> bool:
        return bool(self.urls)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Launch or attach every instance and wait until each answers ``/health`` (DopdError,
        one line, after ``start_timeout_s`` or when a launched one exits)."""
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=self.limits.timeout())
        for iid, role in enumerate(self.initial_roles):
            url = self.urls[iid] if self.attached else \
                f"http://{self.launches[iid].host}:{self.launches[iid].port}"
            inst = VllmInstance(iid, role, url, limits=self.limits)
            inst.session = self.session
            inst.emit = self._emit
            inst.on_unreachable = self._unreachable
            self.instances[iid] = inst
            self._launch(inst)
        try:
            await asyncio.gather(*(self._wait_ready(i) for i in self.instances.values()))
        except BaseException:
            await self.stop()
            raise
        self._tasks.append(asyncio.create_task(self._monitor()))
        self._tasks.append(asyncio.create_task(self._scrape_loop()))

    def _launch(self, inst: VllmInstance) -> None:
        inst.state = InstanceState.STARTING
        inst.launched_t = time.monotonic()
        inst.cold_start_s = None
        if self.attached:
            return
        spec = self.launches[inst.instance_id]
        log = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = self.log_dir / f"vllm-{inst.instance_id}.log"
        inst.process = _Process(spec.argv(self.python), spec.env(), log)
        inst.pid = inst.process.proc.pid

    async def _health(self, inst: VllmInstance) -> bool:
        assert self.session is not None
        try:
            async with self.session.get(f"{inst.url}/health",
                                        timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)) \
                    as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _wait_ready(self, inst: VllmInstance) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        where = f"vLLM instance {inst.instance_id} ({inst.url})"
        while not await self._health(inst):
            if inst.process is not None and not inst.process.alive():
                raise DopdError(f"{where} exited during start-up ({inst.process.detail()})")
            if time.monotonic() > deadline:
                raise DopdError(f"{where} not healthy after {self.start_timeout_s:g} s")
            await asyncio.sleep(0.25)
        assert self.session is not None
        async with self.session.get(f"{inst.url}/v1/models") as resp:
            models = (await resp.json()).get("data") or [{}]
        inst.model = str(models[0].get("id", ""))
        self.max_model_len = int(models[0].get("max_model_len") or self.max_model_len)
        await self._scrape(inst)
        inst.cold_start_s = time.monotonic() - inst.launched_t
        self.cold_starts.append(inst.cold_start_s)
        inst.state = InstanceState.ACTIVE
        if self.on_ready is not None:
            self.on_ready(inst.instance_id, inst.cold_start_s)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Cancel every call, stop launched instances (SIGTERM, then SIGKILL), close HTTP."""
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        procs = []
        for inst in self.instances.values():
            inst.cancel_all()
            inst.state = InstanceState.STOPPED
            if inst.process is not None:
                procs.append(inst.process)
        await asyncio.gather(*(asyncio.to_thread(p.terminate, min(timeout_s, 10.0))
                               for p in procs))
        if self.session is not None:
            await self.session.close()
            self.session = None

    # ------------------------------------------------------------------ events, losses
    def _emit(self, iid: int, ev: Event) -> None:
        inst = self.instances.get(iid)
        if inst is not None and inst.state != InstanceState.STOPPED:
            self.listener(iid, ev)

    def _unreachable(self, inst: VllmInstance) -> bool:
        """A call could not reach ``inst``: True (and the instance is lost) when its process
        has exited; an attached one is checked by the monitor's health probe."""
        if inst.state == InstanceState.STOPPED:
            return True
        if inst.process is not None and not inst.process.alive():
            self._lost(inst)
            return True
        return False

    async def _monitor(self) -> None:
        probe_every = max(1, round(1.0 / MONITOR_INTERVAL_S))
        turn = 0
        while not self.stopping:
            await asyncio.sleep(MONITOR_INTERVAL_S)
            turn += 1
            for inst in list(self.instances.values()):
                if inst.process is not None:
                    if inst.state != InstanceState.STOPPED and not inst.process.alive():
                        self._lost(inst)
                elif turn % probe_every == 0 and inst.instance_id not in self.restarting:
                    up = await self._health(inst)
                    missed = 0 if up else self._missed.get(inst.instance_id, 0) + 1
                    self._missed[inst.instance_id] = missed
                    if missed >= PROBES_LOST and inst.state != InstanceState.STOPPED:
                        self._lost(inst)
            self.on_tick()

    def _lost(self, inst: VllmInstance) -> None:
        """``inst`` died (launched) or stopped answering (attached): its calls end, the
        dispatcher re-places its requests; a launched one restarts after its backoff, an
        attached one comes back when ``/health`` answers."""
        self.losses += 1
        how = "exited" if inst.process is not None else "stopped answering /health"
        print(f"dopd: vLLM instance {inst.instance_id} ({inst.url}) {how}; its requests are "
              f"placed again", file=sys.stderr, flush=True)
        inst.state = InstanceState.STOPPED
        inst.cancel_all()
        self.on_crash(inst.instance_id)
        if self.restart or self.attached:
            self.restarting.add(inst.instance_id)
            self._tasks = [t for t in self._tasks if not t.done()]
            self._tasks.append(asyncio.create_task(self._restart(inst)))

    async def _restart(self, inst: VllmInstance) -> None:
        iid = inst.instance_id
        delay = self._backoff.setdefault(iid, RestartBackoff(self.faults)).record()
        if delay > 0:
            await asyncio.sleep(delay)
        if self.stopping:
            return
        if inst.process is not None:
            await asyncio.to_thread(inst.process.terminate, 2.0)
            inst.restarts += 1
            self._launch(inst)
        try:
            await self._wait_ready(inst)
        except DopdError as exc:
            print(f"dopd: {exc}", file=sys.stderr, flush=True)
            if not self.stopping:
                self._lost(inst)
                return
        self.restarting.discard(iid)

    # ------------------------------------------------------------------ live signals
    async def _scrape(self, inst: VllmInstance) -> None:
        assert self.session is not None
        try:
            async with self.session.get(f"{inst.url}/metrics",
                                        timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)) \
                    as resp:
                if resp.status != 200:
                    return
                reading = MetricsReading.parse(await resp.text())
        except (aiohttp.ClientError, TimeoutError):
            return
        before = self._readings.get(inst.instance_id)
        self._readings[inst.instance_id] = reading
        step = reading.recent_step_s(before)
        total = reading.kv_blocks
        inst.stats = dataclasses.replace(
            inst.stats, waiting=reading.waiting, decode_batch=reading.running,
            kv_total_blocks=total, kv_used_blocks=round(reading.kv_usage * total),
            recent_step_s=step or inst.stats.recent_step_s, unfinished=len(inst.calls),
            steps=int(reading.generation_tokens))
        inst.stats_t = time.monotonic()

    async def _scrape_loop(self) -> None:
        while not self.stopping:
            await asyncio.sleep(self.metrics_period_s)
            await asyncio.gather(*(self._scrape(i) for i in self.instances.values()
                                   if i.state != InstanceState.STOPPED))


def build_vllm_fleet(config: Any, roles: list[Role]) -> VllmFleet:
    """The fleet of a :class:`~dopd.serve.serve_config.ServeConfig` with ``engine`` vllm:
    attached at its ``vllm_urls``, else launched here (one ``vllm serve`` per instance)."""
    from dopd.serve.vllm.launch import vllm_python

    limits = CallLimits(read_s=config.vllm_timeout_s)
    log_dir = Path(config.vllm_log_dir) if config.vllm_log_dir else None
    if config.vllm_urls:
        return VllmFleet(roles, urls=list(config.vllm_urls), restart=config.restart_workers,
                         start_timeout_s=config.vllm_start_timeout_s,
                         metrics_period_s=config.vllm_metrics_period_s, limits=limits)
    launches = [LaunchSpec(config.model, config.vllm_port + i, config.vllm_side_port + i,
                           threads=config.threads, kv_space_gb=config.vllm_kv_space_gb,
                           max_model_len=config.max_model_len, dtype=config.dtype,
                           eager=config.vllm_eager, extra=tuple(config.vllm_args))
                for i in range(len(roles))]
    return VllmFleet(roles, launches=launches, python=vllm_python(config.vllm_python),
                     restart=config.restart_workers,
                     start_timeout_s=config.vllm_start_timeout_s,
                     metrics_period_s=config.vllm_metrics_period_s, limits=limits,
                     log_dir=log_dir)
