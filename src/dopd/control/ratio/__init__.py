"""The optimal P/D ratio solver (DESIGN.md "The P/D ratio solver").

Typical use::

    inst = InstanceModel.from_cluster_config(ClusterConfig())        # or
    InstanceModel.from_catalog(...)
    stats = WorkloadStats.from_workload(workload)             # or from_moments / from_forecast
    plan = solve(stats, inst, SLO(ttft_s=1.0, tpot_s=0.05), instances=8)
    plan.n_prefill, plan.n_decode, plan.attainment, plan.splits

Modules: :mod:`.stats` (load statistics), :mod:`.arrivals` (time variation of a trace),
:mod:`.instance` (cost tables of an instance type), :mod:`.queueing` (M/G/k approximations),
:mod:`.prefill` / :mod:`.decode` (per-side predictions), :mod:`.backlog` (fluid backlog through
bursts), :mod:`.evaluate` (joint predictions of splits), :mod:`.solver` (the plan) and
:mod:`.correction` (online calibration).
"""

from dopd.control.ratio.arrivals import ArrivalSeries
from dopd.control.ratio.correction import CorrectionFactors
from dopd.control.ratio.instance import InstanceModel
from dopd.control.ratio.queueing import WaitDistribution, erlang_b, erlang_c, mgk_wait
from dopd.control.ratio.solver import PDPlan, SolverConfig, SplitPrediction, predict, solve
from dopd.control.ratio.stats import LengthDist, WorkloadStats, as_stats

__all__ = [
    "ArrivalSeries",
    "CorrectionFactors",
    "InstanceModel",
    "LengthDist",
    "PDPlan",
    "SolverConfig",
    "SplitPrediction",
    "WaitDistribution",
    "WorkloadStats",
    "as_stats",
    "erlang_b",
    "erlang_c",
    "mgk_wait",
    "predict",
    "solve",
]
