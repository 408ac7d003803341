"""Cluster backends: the instances a front end serves with.

:class:`InstanceHandle` is what the dispatcher and the controller see of one instance: its id,
role and state, its latest stats, and ``send`` for a control command. :class:`WorkerCluster`
is what every backend shares: the front end's control channel, the instances, the routing of
their events (``ready`` and ``stats`` are kept here, the rest go to the listener), the watch
over the workers (crashes are reported, crashed workers restarted in their role, with the
backoff of :class:`~dopd.serve.faults.RestartBackoff`; a worker that holds work and has not
reported for ``faults.stall_timeout_s`` is declared stalled: reported as crashed, killed and
restarted), and adding or removing instances (elastic pools). Where a worker runs is its
:class:`Launcher`'s business:
:class:`LocalCluster` spawns processes on this machine (``spawn`` start method),
:class:`dopd.serve.ray_cluster.RayCluster` starts Ray actors. Workers of every backend run the
same loop (:mod:`dopd.serve.worker`) over the same ZMQ channels.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from dopd.errors import DopdError, require
from dopd.serve.channel_auth import ClusterKeys
from dopd.serve.channels import FrontControl
from dopd.serve.engines import EngineSpec
from dopd.serve.faults import FaultPolicy, RestartBackoff
from dopd.serve.messages import (
    Command,
    Event,
    Ready,
    StatsReport,
    Stop,
    WireError,
    WorkerStats,
    decode_event,
    encode,
)
from dopd.serve.step_samples import StepSample, samples_from_wire
from dopd.serve.worker import WorkerSpec, worker_main
from dopd.types import InstanceState, Role

MONITOR_INTERVAL_S = 0.1
_LOGGED_BAD_EVENTS = 10  # bad events logged per cluster (all are counted)
_WATCHED = (InstanceState.ACTIVE, InstanceState.DRAINING, InstanceState.SWITCHING)


class InstanceHandle(Protocol):
    """One serving instance as the front end sees it (every backend's instances)."""

    instance_id: int
    role: Role
    state: InstanceState
    target_role: Role | None
    stats: WorkerStats
    stats_t: float
    kv_addr: str
    pid: int | None
    restarts: int

    def send(self, msg: Command) -> bool:
        """Queue a control command; False when the instance cannot take it."""
        ...


class WorkerInstance:
    """One worker as the front end tracks it; ``process`` is its launcher's handle."""

    def __init__(self, instance_id: int, role: Role, control: FrontControl) -> None:
        self.instance_id = instance_id
        self.role = role
        self.state = InstanceState.STARTING
        self.target_role: Role | None = None
        self.stats = WorkerStats()
        self.stats_t = 0.0
        self.kv_addr = ""
        self.pid: int | None = None
        self.restarts = 0
        self.process: Any = None
        self.launched_t = 0.0
        self.cold_start_s: float | None = None
        self.ready = asyncio.Event()
        self._control = control

    def send(self, msg: Command) -> bool:
        if self.state in (InstanceState.STARTING, InstanceState.STOPPED):
            return False
        return self._control.send(self.instance_id, encode(msg))


Listener = Callable[[int, Event], None]
CrashHandler = Callable[[int], None]
StepListener = Callable[[int, list[StepSample], int], None]


class Launcher(Protocol):
    """Starts, watches and stops the worker processes of one backend (calls never block long)."""

    def control_host(self) -> str:
        """The address the front end's control channel binds: reachable from every worker."""
        ...

    def launch(self, spec: WorkerSpec) -> Any:
        """Start a worker running ``spec``; returns its handle without waiting for it."""
        ...

    def pid(self, handle: Any) -> int | None:
        """The worker's process id when known before it reports ready."""
        ...

    def alive(self, handle: Any) -> bool:
        """False once the worker has exited or died (a worker still being placed is alive)."""
        ...

    def exit_detail(self, handle: Any) -> str:
        """Why an exited worker ended (exit code, error)."""
        ...

    def terminate(self, handle: Any) -> None:
        """Make sure the worker is gone and its resources are free."""
        ...

    def close(self) -> None:
        """Release the backend once every worker is stopped."""
        ...


class ProcessLauncher:
    """Worker processes on this machine (``spawn`` start method)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._mp = mp.get_context("spawn")

    def control_host(self) -> str:
        return self.host

    def launch(self, spec: WorkerSpec) -> Any:
        process = self._mp.Process(target=worker_main, args=(spec,), daemon=True,
                                   name=f"dopd-worker-{spec.instance_id}")
        process.start()
        return process

    def pid(self, handle: Any) -> int | None:
        return handle.pid  # type: ignore[no-any-return]

    def alive(self, handle: Any) -> bool:
        return handle.is_alive()  # type: ignore[no-any-return]

    def exit_detail(self, handle: Any) -> str:
        return f"exit code {handle.exitcode}"

    def terminate(self, handle: Any) -> None:
        if handle.is_alive():
            handle.terminate()
            handle.join(2.0)
        if handle.is_alive():
            handle.kill()
            handle.join(2.0)

    def close(self) -> None:
        """Nothing to release."""


class WorkerCluster:
    """The workers of one deployment, started by ``launcher`` (see the module docstring).

    ``engine`` is the template of every worker's engine (its role and name are set per
    instance). ``listener`` gets every worker event other than ``ready``/``stats``;
    ``on_crash`` is called (in the event loop) when a worker dies unexpectedly; ``on_ready``
    (when set) with the id and seconds since launch of each worker that reports ready.
    ``step_listener`` (when set) gets the steps each event reports (id, samples, samples lost
    to the worker's bound; see :mod:`dopd.serve.step_samples`); ``bad_step_reports`` counts
    reports that were not of the expected wire version or shape (ignored). Every event is
    decoded here (:func:`dopd.serve.messages.decode_event`), so consumers get typed objects;
    ``bad_events`` counts events of another wire version or malformed (logged, ignored).
    ``channel_auth`` draws the cluster's keys at :meth:`start` (:mod:`dopd.serve.channel_auth`):
    only its workers can reach the control and KV sockets; ``kv_auth`` (``curve`` or ``hmac``)
    picks how the KV sockets use them.
    ``cold_starts`` lists the measured times from launching a worker to its ``ready``.
    ``faults`` sets the watchdog and the restart backoff; ``holding(iid)`` (set by the front
    end) counts the requests placed on an instance, ``on_tick`` runs on every turn of the
    watch (every ``MONITOR_INTERVAL_S``). ``stalls`` counts workers the watchdog declared
    stalled, ``restarting`` the instances waiting for (or in) a restart.
    """

    def __init__(self, engine: EngineSpec, roles: list[Role], launcher: Launcher, *,
                 restart: bool = True, start_timeout_s: float = 120.0,
                 channel_auth: bool = True, kv_auth: str = "curve") -> None:
        require(len(roles) >= 1, "a cluster needs at least one instance")
        self.channel_auth = channel_auth
        self.kv_auth = kv_auth
        self.keys: ClusterKeys | None = None
        self.engine = engine
        self.initial_roles = list(roles)
        self.launcher = launcher
        self.restart = restart
        self.start_timeout_s = start_timeout_s
        self.control: FrontControl | None = None
        self.instances: dict[int, WorkerInstance] = {}
        self.listener: Listener = lambda iid, ev: None
        self.on_crash: CrashHandler = lambda iid: None
        self.on_ready: Callable[[int, float], None] | None = None
        self.step_listener: StepListener | None = None
        self.bad_step_reports = 0
        self.bad_events = 0
        self.kv_transport = "socket"
        self.max_model_len = 0
        self.cold_starts: list[float] = []
        self.stopping = False
        self.faults = FaultPolicy()
        self.holding: Callable[[int], int] = lambda iid: 0
        self.on_tick: Callable[[], None] = lambda: None
        self.stalls = 0
        self.restarting: set[int] = set()
        self._backoff: dict[int, RestartBackoff] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Launch every worker and wait until all are ready (DopdError after the timeout)."""
        self.keys = ClusterKeys.generate(self.kv_auth == "curve") if self.channel_auth else None
        self.control = FrontControl(self.launcher.control_host(), self.keys)
        self._tasks.append(asyncio.create_task(self.control.run(self._on_event)))
        for iid, role in enumerate(self.initial_roles):
            self.instances[iid] = WorkerInstance(iid, role, self.control)
            self._spawn(self.instances[iid])
        await self._wait_ready(list(self.instances.values()))
        self._tasks.append(asyncio.create_task(self._monitor()))

    def _spawn(self, inst: WorkerInstance) -> None:
        assert self.control is not None
        spec = WorkerSpec(inst.instance_id, self.control.address,
                          replace(self.engine, role=inst.role, name=f"worker-{inst.instance_id}",
                                  index=inst.instance_id),
                          self.launcher.control_host(),
                          fault_injection=self.faults.fault_injection, keys=self.keys,
                          kv_transport=self.kv_transport)
        inst.state = InstanceState.STARTING
        inst.ready.clear()
        inst.cold_start_s = None
        inst.launched_t = time.monotonic()
        inst.process = self.launcher.launch(spec)
        inst.pid = self.launcher.pid(inst.process)

    def alive(self, inst: WorkerInstance) -> bool:
        """Whether the worker of ``inst`` is running (or still starting)."""
        return inst.process is not None and self.launcher.alive(inst.process)

    async def _wait_ready(self, instances: list[WorkerInstance]) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        for inst in instances:
            while not inst.ready.is_set():
                if not self.alive(inst):
                    raise DopdError(f"worker {inst.instance_id} exited during start-up "
                                    f"({self.launcher.exit_detail(inst.process)})")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DopdError(f"worker {inst.instance_id} not ready after "
                                    f"{self.start_timeout_s:g} s")
                try:
                    await asyncio.wait_for(inst.ready.wait(), min(left, 0.5))
                except TimeoutError:
                    continue

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Ask every worker to stop, wait up to ``timeout_s``, then terminate what is left."""
        self.stopping = True
        for inst in self.instances.values():
            inst.send(Stop())
        deadline = time.monotonic() + timeout_s
        for inst in self.instances.values():
            # a worker still starting cannot take the stop: it is ended right away
            while self.alive(inst) and time.monotonic() < deadline and \
                    inst.state != InstanceState.STARTING:
                await asyncio.sleep(0.05)
            if inst.process is not None:
                self.launcher.terminate(inst.process)
            inst.state = InstanceState.STOPPED
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.control is not None:
            self.control.close()
            self.control = None
        self.launcher.close()

    # ------------------------------------------------------------------ elastic pools
    async def add_instance(self, role: Role) -> WorkerInstance:
        """Launch one more worker in ``role`` under the next free id and wait until it is
        ready (its cold start is measured); DopdError when it does not start (it is then
        stopped and stays listed as STOPPED)."""
        require(self.control is not None and not self.stopping, "the cluster is not running")
        assert self.control is not None
        iid = max(self.instances, default=-1) + 1
        inst = WorkerInstance(iid, role, self.control)
        self.instances[iid] = inst
        self._spawn(inst)
        try:
            await self._wait_ready([inst])
        except DopdError:
            inst.state = InstanceState.STOPPED
            self.launcher.terminate(inst.process)
            raise
        return inst

    async def remove_instance(self, iid: int, timeout_s: float = 10.0) -> None:
        """Stop worker ``iid`` (the caller drained it first); it stays listed as STOPPED."""
        inst = self.instances.get(iid)
        require(inst is not None, f"no instance {iid}")
        assert inst is not None and self.control is not None
        inst.state = InstanceState.STOPPED  # before the stop: the monitor must not see a crash
        inst.stats = WorkerStats()
        self.control.send(iid, encode(Stop()))
        deadline = time.monotonic() + timeout_s
        while self.alive(inst) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.launcher.terminate(inst.process)

    # ------------------------------------------------------------------ events
    def _on_event(self, iid: int, raw: Any) -> None:
        inst = self.instances.get(iid)
        if inst is None:
            return
        try:
            ev = decode_event(raw)
        except WireError as exc:
            self.bad_events += 1
            if self.bad_events <= _LOGGED_BAD_EVENTS:
                print(f"dopd: worker {iid} sent a bad event (ignored): {exc}",
                      file=sys.stderr, flush=True)
            return
        stats = getattr(ev, "stats", None)
        if stats is not None:
            inst.stats = stats
            inst.stats_t = time.monotonic()
        steps = getattr(ev, "steps", None)
        if steps is not None and self.step_listener is not None:
            try:
                samples, dropped = samples_from_wire(steps)
            except DopdError:
                self.bad_step_reports += 1
            else:
                self.step_listener(iid, samples, dropped)
        if isinstance(ev, Ready):
            inst.kv_addr = ev.kv_addr
            inst.pid = ev.pid
            self.max_model_len = ev.max_model_len
            if inst.cold_start_s is None:
                inst.cold_start_s = time.monotonic() - inst.launched_t
                self.cold_starts.append(inst.cold_start_s)
            inst.state = InstanceState.ACTIVE
            inst.ready.set()
            if self.on_ready is not None:
                self.on_ready(iid, time.monotonic() - inst.launched_t)
        elif not isinstance(ev, StatsReport):
            self.listener(iid, ev)

    async def _monitor(self) -> None:
        while not self.stopping:
            await asyncio.sleep(MONITOR_INTERVAL_S)
            now = time.monotonic()
            for inst in list(self.instances.values()):
                if self.stopping or inst.state == InstanceState.STOPPED:
                    continue
                if not self.alive(inst):
                    self._lost(inst, stalled=False)
                elif self._stalled(inst, now):
                    self.stalls += 1
                    self._lost(inst, stalled=True)
            self.on_tick()

    def _stalled(self, inst: WorkerInstance, now: float) -> bool:
        """A worker that holds work and has sent nothing for the stall timeout."""
        timeout = self.faults.stall_timeout_s
        if timeout <= 0 or inst.state not in _WATCHED or now - inst.stats_t <= timeout:
            return False
        s = inst.stats
        return self.holding(inst.instance_id) > 0 or s.unfinished > 0 or s.held > 0 \
            or s.pending_decodes > 0

    def _lost(self, inst: WorkerInstance, stalled: bool) -> None:
        """``inst``'s worker died or stalled: stop routing to it, report it, make sure it is
        gone and (unless restarts are off) restart it after its backoff."""
        inst.state = InstanceState.STOPPED
        inst.stats = WorkerStats()
        self.on_crash(inst.instance_id)
        if self.restart:
            inst.target_role = None
            self.restarting.add(inst.instance_id)
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.create_task(self._restart(inst, stalled)))

    async def _restart(self, inst: WorkerInstance, stalled: bool) -> None:
        iid = inst.instance_id
        if stalled:  # a frozen process ignores SIGTERM until killed: off the event loop
            await asyncio.to_thread(self.launcher.terminate, inst.process)
        if not self.restart:
            return
        delay = self._backoff.setdefault(iid, RestartBackoff(self.faults)).record()
        if delay > 0:
            await asyncio.sleep(delay)
        if self.stopping or inst.state != InstanceState.STOPPED:
            self.restarting.discard(iid)
            return
        if not stalled:
            await asyncio.to_thread(self.launcher.terminate, inst.process)
        inst.restarts += 1
        self._spawn(inst)
        try:
            await self._wait_ready([inst])
        except DopdError:  # it died or hung while starting: another loss, backed off
            if not self.stopping and inst.state != InstanceState.STOPPED:
                self._lost(inst, stalled=True)
                return
        self.restarting.discard(iid)


class LocalCluster(WorkerCluster):
    """Worker processes on this machine; the control and KV sockets bind ``host``."""

    def __init__(self, engine: EngineSpec, roles: list[Role], *, restart: bool = True,
                 start_timeout_s: float = 120.0, host: str = "127.0.0.1",
                 channel_auth: bool = True, kv_auth: str = "curve") -> None:
        super().__init__(engine, roles, ProcessLauncher(host), restart=restart,
                         start_timeout_s=start_timeout_s, channel_auth=channel_auth,
                         kv_auth=kv_auth)
        self.host = host
