"""``run_simulation``: the one entry point of the simulator (CLI, experiments, benchmarks)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np

from dopd.control.calibration import CalibratedLatency, CalibrationConfig
from dopd.control.cluster_models import ClusterModels, build_belief, build_models
from dopd.control.policies.base import ClusterPolicy, HindsightSearch, PolicyContext, make_policy
from dopd.control.routing.router import RouterContext, make_router
from dopd.errors import require
from dopd.metrics.summary import summarize_result
from dopd.sim.api import SimConfig, SimResult
from dopd.sim.cluster import SimCluster
from dopd.sim.truth import build_truth
from dopd.types import SLO
from dopd.workload import Workload


def run_simulation(workload: Workload, config: SimConfig, policy: str | ClusterPolicy,
                   slo: SLO | None = None, seed: int = 0,
                   progress: Callable[[float], None] | None = None) -> SimResult:
    """Simulate ``workload`` on the cluster of ``config`` under ``policy`` (a spec such as
    ``"colocated"``, ``"static:3:5"``, ``"static:best"``, or a :class:`ClusterPolicy`).

    ``slo`` is needed by policies that rank or target latencies (``static:best`` raises
    DopdError without it). Same inputs and ``seed`` give identical per-request results.
    ``progress`` gets the fraction of requests done, at most about 100 times. Bad input (unknown
    policy, model or GPU, a split that does not match ``config.instances``) raises DopdError.

    Truth and belief: the instances' steps are timed by the hardware truth of ``config.truth``
    (seeded by ``seed``); the policy and the router get :meth:`SimConfig.control_view` and the
    belief (:func:`~dopd.control.cluster_models.build_belief`), never the truth. A
    :class:`ClusterPolicy`
    object passed in was built by the caller with whatever model it was given.
    """
    require(isinstance(config, SimConfig), "config must be a SimConfig")
    require(len(workload) >= 1, "workload has no requests")
    models = build_models(config)
    belief = build_belief(config, models, config.truth.model_bias)
    context = control_context(config, models, belief, slo, seed)
    built = make_policy(policy, context) if isinstance(policy, str) else policy
    require(isinstance(built, (ClusterPolicy, HindsightSearch)),
            f"policy must be a spec string or a ClusterPolicy, got {type(policy).__name__}")
    if isinstance(built, HindsightSearch):
        return _search(workload, config, models, context, built, progress)
    return _run_one(workload, config, models, built, progress, slo, belief, seed)


def control_context(config: SimConfig, models: ClusterModels, belief: CalibratedLatency,
                    slo: SLO | None, seed: int) -> PolicyContext:
    """What a cluster policy of a run gets: the config without the truth, and the belief."""
    return PolicyContext(config.control_view(), belief, slo, seed, models.kv_blocks)


def build_cluster(workload: Workload, config: SimConfig, policy: str | ClusterPolicy,
                  slo: SLO | None = None, seed: int = 0,
                  progress: Callable[[float], None] | None = None,
                  calibration: CalibrationConfig | None = None) -> SimCluster:
    """The ready-to-run cluster of one policy (not a search), for inspection in tests and tools:
    ``cluster.run()`` then :func:`collect_result`. ``calibration``: the belief's settings
    (default :class:`CalibrationConfig`)."""
    models = build_models(config)
    belief = build_belief(config, models, config.truth.model_bias, calibration)
    built = policy
    if isinstance(policy, str):
        built = make_policy(policy, control_context(config, models, belief, slo, seed))
    require(isinstance(built, ClusterPolicy), f"{policy!r} is not a single cluster policy")
    assert isinstance(built, ClusterPolicy)
    return _cluster(workload, config, models, built, progress, slo, belief, seed)


def _cluster(workload: Workload, config: SimConfig, models: ClusterModels, policy: ClusterPolicy,
             progress: Callable[[float], None] | None, slo: SLO | None = None,
             belief: CalibratedLatency | None = None, seed: int = 0) -> SimCluster:
    if belief is None:
        belief = build_belief(config, models, config.truth.model_bias)
    router_name = policy.router if config.router == "auto" else config.router
    router = make_router(router_name, RouterContext.of(config.control_view(), models, slo,
                                                       latency=belief))
    cluster = SimCluster(workload.arrival_s.tolist(), workload.prompt_tokens.tolist(),
                         workload.output_tokens.tolist(), config, models, policy, router,
                         build_truth(config, seed), belief, progress)
    cluster.life.init_instances(list(policy.initial_roles(config.instances)), policy.name)
    return cluster


def collect_result(cluster: SimCluster, wall_s: float) -> SimResult:
    """The :class:`SimResult` of a cluster that has run."""
    end = cluster.q.now
    n = cluster.n
    return SimResult(
        policy=cluster.policy.name,
        request_id=np.arange(n, dtype=np.int64),
        arrival_s=np.asarray(cluster.arrival_s, dtype=np.float64),
        prompt_tokens=np.asarray(cluster.prompt, dtype=np.int64),
        output_tokens=np.asarray(cluster.output, dtype=np.int64),
        state=np.asarray(cluster.state, dtype=np.int64),
        first_token_s=np.asarray(cluster.first_s, dtype=np.float64),
        finish_s=np.asarray(cluster.finish_s, dtype=np.float64),
        prefill_instance=np.asarray(cluster.prefill_of, dtype=np.int64),
        decode_instance=np.asarray(cluster.decode_of, dtype=np.int64),
        timeline=cluster.recorder.timeline(cluster.arrival_s),
        gpu_seconds=cluster.life.gpu_seconds(end),
        switches=cluster.life.switches,
        kv_bytes_moved=cluster.kv_bytes_moved,
        sim_end_s=end,
        events=cluster.q.popped,
        wall_s=wall_s,
        reason=dict(cluster.reason),
        decisions=_decisions(cluster),
    )


def _decisions(cluster: SimCluster) -> tuple[dict[str, object], ...]:
    """The cluster's action records merged, by time, with the records a policy keeps in its
    ``decisions`` attribute (if any) and the belief's prediction errors."""
    own = [*(getattr(cluster.policy, "decisions", None) or ()), *cluster.belief.records]
    if not own:
        return tuple(cluster.life.decisions)
    merged = sorted([*cluster.life.decisions, *own], key=lambda r: float(r.get("t", 0.0)))
    return tuple(merged)


def _run_one(workload: Workload, config: SimConfig, models: ClusterModels, policy: ClusterPolicy,
             progress: Callable[[float], None] | None, slo: SLO | None = None,
             belief: CalibratedLatency | None = None, seed: int = 0) -> SimResult:
    started = time.perf_counter()
    cluster = _cluster(workload, config, models, policy, progress, slo, belief, seed)
    cluster.run()
    return collect_result(cluster, time.perf_counter() - started)


def _search(workload: Workload, config: SimConfig, models: ClusterModels, context: PolicyContext,
            search: HindsightSearch, progress: Callable[[float], None] | None) -> SimResult:
    """Run every candidate on the whole workload; keep the highest attainment, then goodput."""
    slo = context.slo
    require(slo is not None, f"{search.name} needs an SLO")
    assert slo is not None
    started = time.perf_counter()
    total = len(search.candidates)
    best: SimResult | None = None
    best_key = (-math.inf, -math.inf)
    tried: list[dict[str, object]] = []
    reported = [0.0]

    for index, spec in enumerate(search.candidates):
        belief = build_belief(config, models, config.truth.model_bias)
        policy = make_policy(spec, control_context(config, models, belief, slo, context.seed))
        require(isinstance(policy, ClusterPolicy), f"{search.name}: {spec} is not a policy")
        assert isinstance(policy, ClusterPolicy)

        def sub(fraction: float, index: int = index) -> None:
            overall = (index + fraction) / total
            if progress is not None and overall - reported[0] >= 0.01:
                reported[0] = overall
                progress(overall)

        result = _run_one(workload, config, models, policy, sub if progress else None, slo,
                          belief, context.seed)
        summary = summarize_result(result, slo)
        tried.append({"t": 0.0, "action": "candidate", "policy": spec,
                      "attainment": summary.attainment, "goodput_rps": summary.goodput_rps})
        key = (summary.attainment, summary.goodput_rps)
        if key > best_key:
            best, best_key = result, key
    assert best is not None
    if progress is not None and reported[0] < 1.0:
        progress(1.0)
    return dataclasses.replace(best, policy=search.label(best.policy),
                               decisions=tuple(tried) + best.decisions,
                               wall_s=time.perf_counter() - started)
