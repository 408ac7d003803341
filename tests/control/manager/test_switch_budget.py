"""The manager's switch budget: a flapping target costs at most the burst plus the refill of
``switch_rate_h`` moves per instance-hour (issue 11: <= 2 switches per instance-hour at a steady
load), and a settled steady load under the ``dopd`` policy stays within it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dopd.control.manager import ManagerConfig, PDManager, Split
from dopd.control.policies.base import ClusterView, InstanceView, SwitchRole
from dopd.control.policies.options import DopdOptions
from dopd.errors import DopdError
from dopd.sim.api import SimConfig
from dopd.sim.simulation import run_simulation
from dopd.types import SLO, InstanceState, Role
from dopd.workload.base import Workload


def split_view(p: int, d: int, now: float) -> ClusterView:
    views = [InstanceView(i, Role.PREFILL if i < p else Role.DECODE, InstanceState.ACTIVE, None,
                          0, 0, 0, 0, 0, 0, 0, 1000, 0.01, 0) for i in range(p + d)]
    return ClusterView(now, tuple(views), p + d, 0, 0)


def flap(config: ManagerConfig, hours: float, n: int = 8) -> int:
    """Switches made when the target flips between 2P:6D and 6P:2D every 10 s for ``hours``,
    every switch completing at once."""
    m = PDManager(config)
    p, moves = 4, 0
    for k, now in enumerate(np.arange(0.0, hours * 3600.0, 10.0)):
        target = Split(2, n - 2) if (k // 3) % 2 else Split(6, n - 6)
        decision = m.step(float(now), split_view(p, n - p, float(now)), target)
        for action in decision.actions:
            assert isinstance(action, SwitchRole)
            p += 1 if action.role == Role.PREFILL else -1
            moves += 1
    return moves


def test_a_flapping_target_is_bounded_by_the_budget() -> None:
    free = flap(ManagerConfig(dwell_s=0.0, reverse_confirm=1, confirm=1, margin=1), 1.0)
    budget = flap(ManagerConfig(dwell_s=0.0, reverse_confirm=1, confirm=1, margin=1,
                                switch_rate_h=2.0), 2.0)
    assert free > 100  # without a budget the manager follows every flip
    assert budget <= 8 + 2 * 8 * 2.0  # the burst (one per instance) plus the refill
    assert budget >= 8 + 2 * 8 * 2.0 - 2


def test_budget_options_parse_and_reject_bad_values() -> None:
    assert DopdOptions.parse("").manager.switch_rate_h == 2.0
    assert math.isinf(DopdOptions.parse("switchrate=inf").manager.switch_rate_h)
    assert DopdOptions.parse("switchburst=3").manager.switch_burst == 3.0
    for bad in ("switchrate=0", "switchrate=fast", "switchburst=0.5"):
        with pytest.raises(DopdError, match="switch"):
            DopdOptions.parse(bad)
    with pytest.raises(DopdError, match="switch"):
        ManagerConfig(switch_rate_h=0.0)


def test_dopd_on_a_steady_bursty_load_stays_within_two_switches_per_instance_hour() -> None:
    rng = np.random.default_rng(0)
    n, rate = 4000, 2.0  # ~33 minutes of Gamma CV 3 arrivals on 4 instances
    gaps = rng.gamma(1 / 9, 9 / rate, n)
    prompts = np.minimum(rng.lognormal(np.log(2000), 1.0, n), 30_000).astype(np.int64)
    outputs = rng.integers(20, 300, n)
    workload = Workload.from_arrays("steady", np.cumsum(gaps), prompts, outputs)
    slo = SLO(ttft_s=2.0, tpot_s=0.1)
    result = run_simulation(workload, SimConfig(instances=4), "dopd", slo, seed=0)
    hours = result.sim_end_s / 3600.0
    settle = 4  # the burst: one move per instance while the first plans settle
    assert result.switches <= settle + 2.0 * 4 * hours + 1e-9
    free = run_simulation(workload, SimConfig(instances=4), "dopd:switchrate=inf", slo, seed=0)
    assert free.switches >= result.switches
