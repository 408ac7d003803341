"""The simulated run's timeline: instance counts by role, queued prompt tokens and running
decodes, sampled every ``SimConfig.timeline_s`` of simulated time."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dopd.sim.api import Timeline
from dopd.sim.instance import SimInstance
from dopd.types import InstanceState, Role


class TimelineRecorder:
    """Samples taken as the event loop passes each sample time (:meth:`sample`)."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.next_sample_s = 0.0
        self._samples: list[tuple[float, int, int, int, int, int]] = []

    def sample(self, t: float, instances: Sequence[SimInstance], unrouted_tokens: int) -> float:
        """Record the state for every sample time <= ``t`` (``unrouted_tokens``: prompt tokens
        waiting for an instance); returns the next sample time."""
        counts = {Role.PREFILL: 0, Role.DECODE: 0, Role.MIXED: 0}
        queued = unrouted_tokens
        running = 0
        for inst in instances:
            if inst.state == InstanceState.ACTIVE or inst.state == InstanceState.DRAINING:
                counts[inst.role] += 1
            queued += inst.sched.queued_prefill_tokens
            running += inst.sched.num_decoding
        dt = self.every_s
        s = self.next_sample_s
        k = len(self._samples)
        while s <= t:
            self._samples.append((s, counts[Role.PREFILL], counts[Role.DECODE],
                                  counts[Role.MIXED], queued, running))
            k += 1
            s = k * dt
        self.next_sample_s = s
        return s

    def timeline(self, arrival_s: Sequence[float]) -> Timeline:
        cols = np.array(self._samples, dtype=np.float64).reshape(-1, 6).T
        time_s = cols[0]
        dt = self.every_s
        arrivals = np.asarray(arrival_s, dtype=np.float64)
        hi = np.searchsorted(arrivals, time_s, side="left")
        lo = np.searchsorted(arrivals, time_s - dt, side="left")
        return Timeline(
            time_s=time_s,
            prefill_instances=np.asarray(cols[1], dtype=np.int64),
            decode_instances=np.asarray(cols[2], dtype=np.int64),
            mixed_instances=np.asarray(cols[3], dtype=np.int64),
            arrivals_rps=(hi - lo) / dt,
            queued_prefill_tokens=np.asarray(cols[4], dtype=np.int64),
            running_decodes=np.asarray(cols[5], dtype=np.int64),
        )
