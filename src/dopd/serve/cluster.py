"""Cluster backends: the instances a front end serves with. Here the local-process backend.

:class:`InstanceHandle` is what the dispatcher and the controller see of one instance (a later
Ray backend implements it too): its id, role and state, its latest stats, and ``send`` for a
control command. :class:`LocalCluster` spawns one worker process per instance (``spawn`` start
method), routes their events (``ready`` and ``stats`` are kept here, the rest go to the
listener), watches the processes, reports crashes and restarts crashed workers in their role.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from dopd.errors import DopdError, require
from dopd.serve.channels import FrontControl
from dopd.serve.engines import EngineSpec
from dopd.serve.worker import WorkerSpec, worker_main
from dopd.types import InstanceState, Role

MONITOR_INTERVAL_S = 0.1
MAX_RESTARTS = 5


class InstanceHandle(Protocol):
    """One serving instance as the front end sees it."""

    instance_id: int
    role: Role
    state: InstanceState
    target_role: Role | None
    stats: dict[str, Any]
    stats_t: float
    kv_addr: str
    pid: int | None
    restarts: int

    def send(self, msg: dict[str, Any]) -> bool:
        """Queue a control command; False when the instance cannot take it."""
        ...


class LocalInstance:
    """A worker process on this machine."""

    def __init__(self, instance_id: int, role: Role, control: FrontControl) -> None:
        self.instance_id = instance_id
        self.role = role
        self.state = InstanceState.STARTING
        self.target_role: Role | None = None
        self.stats: dict[str, Any] = {}
        self.stats_t = 0.0
        self.kv_addr = ""
        self.pid: int | None = None
        self.restarts = 0
        self.process: Any = None
        self.ready = asyncio.Event()
        self._control = control

    def send(self, msg: dict[str, Any]) -> bool:
        if self.state in (InstanceState.STARTING, InstanceState.STOPPED):
            return False
        return self._control.send(self.instance_id, msg)

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()


Listener = Callable[[int, dict[str, Any]], None]
CrashHandler = Callable[[int], None]


class LocalCluster:
    """Worker processes of one deployment (see the module docstring).

    ``engine`` is the template of every worker's engine (its role and name are set per
    instance). ``listener`` gets every worker event other than ``ready``/``stats``;
    ``on_crash`` is called (in the event loop) when a worker process dies unexpectedly.
    """

    def __init__(self, engine: EngineSpec, roles: list[Role], *, restart: bool = True,
                 start_timeout_s: float = 120.0, host: str = "127.0.0.1") -> None:
        require(len(roles) >= 1, "a cluster needs at least one instance")
        self.engine = engine
        self.initial_roles = list(roles)
        self.restart = restart
        self.start_timeout_s = start_timeout_s
        self.host = host
        self.control: FrontControl | None = None
        self.instances: dict[int, LocalInstance] = {}
        self.listener: Listener = lambda iid, ev: None
        self.on_crash: CrashHandler = lambda iid: None
        self.max_model_len = 0
        self.stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._mp = mp.get_context("spawn")

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Spawn every worker and wait until all are ready (DopdError after the timeout)."""
        self.control = FrontControl(self.host)
        self._tasks.append(asyncio.create_task(self.control.run(self._on_event)))
        for iid, role in enumerate(self.initial_roles):
            self.instances[iid] = LocalInstance(iid, role, self.control)
            self._spawn(self.instances[iid])
        await self._wait_ready(list(self.instances.values()))
        self._tasks.append(asyncio.create_task(self._monitor()))

    def _spawn(self, inst: LocalInstance) -> None:
        assert self.control is not None
        spec = WorkerSpec(inst.instance_id, self.control.address,
                          replace(self.engine, role=inst.role, name=f"worker-{inst.instance_id}"),
                          self.host)
        inst.state = InstanceState.STARTING
        inst.ready.clear()
        inst.process = self._mp.Process(target=worker_main, args=(spec,), daemon=True,
                                        name=f"dopd-worker-{inst.instance_id}")
        inst.process.start()
        inst.pid = inst.process.pid

    async def _wait_ready(self, instances: list[LocalInstance]) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        for inst in instances:
            while not inst.ready.is_set():
                if not inst.alive():
                    raise DopdError(f"worker {inst.instance_id} exited during start-up (exit "
                                    f"code {inst.process.exitcode})")
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
            inst.send({"op": "stop"})
        deadline = time.monotonic() + timeout_s
        for inst in self.instances.values():
            while inst.alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if inst.alive():
                inst.process.terminate()
                inst.process.join(2.0)
            if inst.alive():
                inst.process.kill()
                inst.process.join(2.0)
            inst.state = InstanceState.STOPPED
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.control is not None:
            self.control.close()
            self.control = None

    # ------------------------------------------------------------------ events
    def _on_event(self, iid: int, ev: dict[str, Any]) -> None:
        inst = self.instances.get(iid)
        if inst is None:
            return
        stats = ev.get("stats")
        if stats is not None:
            inst.stats = stats
            inst.stats_t = time.monotonic()
        kind = ev.get("ev")
        if kind == "ready":
            inst.kv_addr = ev["kv_addr"]
            self.max_model_len = int(ev["max_model_len"])
            inst.state = InstanceState.ACTIVE
            inst.ready.set()
        elif kind != "stats":
            self.listener(iid, ev)

    async def _monitor(self) -> None:
        while not self.stopping:
            await asyncio.sleep(MONITOR_INTERVAL_S)
            for inst in list(self.instances.values()):
                if self.stopping or inst.state == InstanceState.STOPPED or inst.alive():
                    continue
                inst.state = InstanceState.STOPPED
                inst.stats = {}
                self.on_crash(inst.instance_id)
                if self.restart and inst.restarts < MAX_RESTARTS:
                    inst.restarts += 1
                    inst.target_role = None
                    self._spawn(inst)
                    self._tasks.append(asyncio.create_task(self._await_restart(inst)))

    async def _await_restart(self, inst: LocalInstance) -> None:
        try:
            await self._wait_ready([inst])
        except DopdError:
            inst.state = InstanceState.STOPPED
