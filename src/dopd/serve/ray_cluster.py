"""The Ray backend of ``dopd serve``: every instance is a Ray actor, placed by Ray.

:class:`RayCluster` is a :class:`~dopd.serve.cluster.WorkerCluster` whose launcher
(:class:`RayLauncher`) starts one actor per instance with its resource request (CPUs, and GPUs
on GPU clusters), so the front end, the dispatcher and the controller see the same instances
as with local processes. Ray places and supervises the workers; they still run the same loop
(:mod:`dopd.serve.worker`) and talk to the front end over its ZMQ control channel (bound on the
front end's node address), so the streaming path and the wire format are the backend's
business no more than before. KV moves peer to peer over the workers' sockets, or through the
Ray object store (:mod:`dopd.serve.ray_kv`).

An actor's ``run`` call lasts as long as its worker loop: when it resolves (the loop ended, or
the actor died, e.g. its process was killed or its node was lost) the worker is gone, which the
cluster's monitor reports as a crash (only that instance's requests fail or are retried) and
answers with a new actor in the same role. Elastic pools add and remove actors (a pending
actor is what makes Ray's autoscaler add a node); each one's cold start, from its creation to
its ``ready``, is measured. Importing this module imports Ray.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError

from dopd.errors import DopdError
from dopd.serve.cluster import WorkerCluster, WorkerInstance
from dopd.serve.engines import EngineSpec
from dopd.serve.ray_connect import connect
from dopd.serve.worker import WorkerSpec, run_worker
from dopd.types import Role


class InstanceActor:
    """The body of one instance's actor (wrapped by ``ray.remote`` in :class:`RayLauncher`)."""

    def run(self, spec: WorkerSpec) -> str:
        """Build the engine and run the worker loop until it is told to stop; the worker's
        KV socket binds this actor's node address, or loopback when ``spec.host`` is (a local
        Ray instance serving a loopback front end)."""
        import torch

        torch.set_num_threads(1)
        if spec.host != "127.0.0.1":
            spec = replace(spec, host=ray.util.get_node_ip_address())
        run_worker(spec)  # the spec names its KV transport
        return "stopped"


@dataclass(frozen=True)
class ActorWorker:
    """A launched instance: its actor and the reference of its running ``run`` call."""

    actor: Any
    done: Any


class RayLauncher:
    """Starts instances as Ray actors asking for ``num_cpus`` CPUs and ``num_gpus`` GPUs each,
    on the cluster at ``address`` (None: a local Ray instance with ``local_cpus`` CPUs, with
    Ray's token authentication unless ``insecure``). With a local instance and ``loopback``
    (the front end listens on loopback), dopd's control and KV sockets bind 127.0.0.1."""

    def __init__(self, address: str | None, num_cpus: float, num_gpus: float,
                 local_cpus: int | None = None, *,
                 loopback: bool = False, insecure: bool = False) -> None:
        self.address = address
        self.loopback = loopback and address is None
        self.insecure = insecure
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.local_cpus = local_cpus
        self.connected = False
        self._owns = False
        self._actor: Any = None
        self._host = ""

    def connect(self) -> None:
        """Join (or start) the Ray cluster; DopdError when it cannot be reached."""
        if not self.connected:
            self._owns = connect(self.address, num_cpus=self.local_cpus,
                                 insecure=self.insecure)
            self.connected = True
            self._host = "127.0.0.1" if self.loopback else ray.util.get_node_ip_address()
            self._actor = ray.remote(InstanceActor)

    def control_host(self) -> str:
        self.connect()
        return self._host

    def launch(self, spec: WorkerSpec) -> ActorWorker:
        self.connect()
        actor = self._actor.options(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                    max_restarts=0).remote()
        return ActorWorker(actor, actor.run.remote(spec))

    def pid(self, handle: ActorWorker) -> int | None:
        return None  # known from the worker's ready event

    def alive(self, handle: ActorWorker) -> bool:
        ready, _ = ray.wait([handle.done], timeout=0)
        return not ready

    def exit_detail(self, handle: ActorWorker) -> str:
        try:
            return f"its loop returned {ray.get(handle.done, timeout=1.0)!r}"
        except GetTimeoutError:
            return "still running"
        except RayError as exc:
            return f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"

    def terminate(self, handle: ActorWorker) -> None:
        with contextlib.suppress(RayError, ValueError):  # gone already
            ray.kill(handle.actor, no_restart=True)

    def close(self) -> None:
        if self._owns:
            ray.shutdown()
            self._owns = False
        self.connected = False


class RayCluster(WorkerCluster):
    """Instances as Ray actors (see the module docstring). ``budget`` (the most instances
    alive) sizes a local Ray instance started when ``address`` is None."""

    def __init__(self, engine: EngineSpec, roles: list[Role], *, address: str | None = None,
                 cpus_per_instance: float = 1.0, gpus_per_instance: float = 0.0,
                 kv_transport: str = "socket", restart: bool = True,
                 start_timeout_s: float = 120.0, budget: int | None = None,
                 channel_auth: bool = True, kv_auth: str = "curve", loopback: bool = False,
                 insecure: bool = False) -> None:
        n = max(budget or 0, len(roles))
        self.ray = RayLauncher(address, cpus_per_instance, gpus_per_instance,
                               max(1, math.ceil(n * cpus_per_instance)), loopback=loopback,
                               insecure=insecure)
        super().__init__(engine, roles, self.ray, restart=restart,
                         start_timeout_s=start_timeout_s, channel_auth=channel_auth,
                         kv_auth=kv_auth)
        self.kv_transport = kv_transport  # every worker's spec names it (worker.build_transport)

    def connect(self) -> None:
        """Join (or start) the Ray cluster now rather than in :meth:`start`."""
        self.ray.connect()

    async def _wait_ready(self, instances: list[WorkerInstance]) -> None:
        try:
            await super()._wait_ready(instances)
        except DopdError as exc:
            free = ray.available_resources()
            raise DopdError(f"{exc}; each actor asks for {self.ray.num_cpus:g} CPU and "
                            f"{self.ray.num_gpus:g} GPU, the Ray cluster has "
                            f"{free.get('CPU', 0):g} CPU and {free.get('GPU', 0):g} GPU free") \
                from None
