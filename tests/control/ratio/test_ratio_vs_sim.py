"""The solver's split against brute force in the simulator (every split of a small pool tried).

For each case the simulator runs ``static:P:D`` for every split of N instances; the split the
solver picks must be within 0.02 attainment of the simulator's best, and the predicted
attainment of every split must track the simulated one.
"""

from __future__ import annotations

import numpy as np
import pytest

from dopd.control.ratio import InstanceModel, WorkloadStats, solve
from dopd.metrics.summary import summarize_result
from dopd.sim.api import SimConfig
from dopd.sim.simulation import run_simulation
from dopd.types import SLO
from dopd.workload import LogNormal, Poisson, Workload, load_trace, synthetic_workload


def _poisson() -> Workload:
    return synthetic_workload(Poisson(9.0), LogNormal(1500, 1.0, 250, 1.0), num_requests=3000,
                              seed=1)


def _conv() -> Workload:
    return load_trace("azure-conv").cut(duration_s=600) \
        .scale_rate(4.0)


def _code() -> Workload:
    return load_trace("azure-code").cut(duration_s=1800)


CASES = {
    "poisson-n4": (_poisson, 4, SLO(ttft_s=0.5, tpot_s=0.03)),
    "azure-conv-x4-n6": (_conv, 6, SLO(ttft_s=1.0, tpot_s=0.02)),
    "azure-code-n5": (_code, 5, SLO(ttft_s=1.0, tpot_s=0.025)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_split_matches_simulated_best(name: str) -> None:
    make, n, slo = CASES[name]
    workload = make()
    config = SimConfig(instances=n)
    plan = solve(WorkloadStats.from_workload(workload), InstanceModel.from_cluster_config(config),
                 slo, instances=n)
    simulated = []
    for p in range(1, n):
        result = run_simulation(workload, config, f"static:{p}:{n - p}", slo=slo)
        simulated.append(summarize_result(result, slo).attainment)
    predicted = np.array([row.attainment for row in plan.splits])
    sim = np.array(simulated)
    assert sim[plan.n_prefill - 1] >= sim.max() - 0.02, (predicted, sim)
    assert np.abs(predicted - sim).mean() < 0.06, (predicted, sim)
