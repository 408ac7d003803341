"""Synthetic workloads: an arrival process plus a length sampler, drawn with one seed."""

from __future__ import annotations

import numpy as np

from dopd.errors import require
from dopd.workload.arrivals import ArrivalProcess
from dopd.workload.base import Workload
from dopd.workload.lengths import LengthSampler


def synthetic_workload(
    arrival: ArrivalProcess,
    lengths: LengthSampler,
    duration_s: float | None = None,
    num_requests: int | None = None,
    seed: int = 0,
    name: str | None = None,
) -> Workload:
    """Draw a workload: arrivals in ``[0, duration_s)`` or exactly ``num_requests`` of them.

    Exactly one of ``duration_s`` and ``num_requests`` is required. Arrival times are shifted so
    the first request arrives at 0, and lengths are drawn at those shifted times (so a
    :class:`~dopd.workload.lengths.MixShift` at ``t`` shifts at ``t`` of the workload).
    Arrivals and lengths use independent streams spawned from ``seed``: the same seed gives
    identical arrays, and changing only the length sampler keeps the arrival times.
    Raises :class:`DopdError` when no request arrives in ``duration_s``.
    """
    require(
        isinstance(seed, (int, np.integer)) and seed >= 0, f"seed must be an int >= 0, got {seed!r}"
    )
    arrival_seed, length_seed = np.random.SeedSequence(int(seed)).spawn(2)
    times = arrival.sample(
        np.random.default_rng(arrival_seed), duration_s=duration_s, count=num_requests
    )
    require(times.size >= 1, f"no request arrives within {duration_s} s; raise duration or rate")
    times = times - times[0]
    prompt, output = lengths.sample(np.random.default_rng(length_seed), times.size, times)
    label = name if name is not None else f"{type(arrival).__name__.lower()}-seed{seed}"
    return Workload(label, times, prompt, output)
