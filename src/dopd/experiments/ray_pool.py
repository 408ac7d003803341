"""The Ray executor of an experiment (``dopd experiment --backend ray``): every simulation job
(a max-goodput search or a comparison run) is a Ray task asking for one CPU, so a suite spreads
over every node of a cluster. Jobs are seeded and keyed as on the local process pool, so the
results are the same. Progress is reported per finished job (probe lines are not streamed back
from the cluster)."""

from __future__ import annotations

from typing import Any

import ray

from dopd.experiments.tasks import Outcome, Reporter, Task, run_task, stable_order
from dopd.serve.ray_connect import connect

WAIT_S = 0.25


def _job(task: Task) -> Outcome:
    return run_task(task)


class RayPool:
    """Submits jobs to the Ray cluster at ``address`` (None: a local Ray instance with
    ``workers`` CPUs) and collects them as they finish."""

    def __init__(self, workers: int, address: str | None) -> None:
        self._owns = connect(address, num_cpus=workers)
        self._job = ray.remote(num_cpus=1)(_job)
        self._refs: set[Any] = set()

    def submit(self, task: Task) -> Any:
        ref = self._job.remote(task)
        self._refs.add(ref)
        return ref

    def wait(self, pending: set[Any], reporter: Reporter) -> tuple[list[Outcome], set[Any]]:
        refs = list(pending)
        while not ray.wait(refs, num_returns=1, timeout=WAIT_S)[0]:
            pass
        done, rest = ray.wait(refs, num_returns=len(refs), timeout=0)
        self._refs -= set(done)
        return stable_order(ray.get(done)), set(rest)

    def close(self) -> None:
        for ref in self._refs:
            ray.cancel(ref, force=True)
        self._refs.clear()
        if self._owns:
            ray.shutdown()
