"""Truth and belief in the simulator: the hardware's noise, bias and slowdown, what the control
plane holds, determinism, and the calibration ablation."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np
import pytest
from sim_workloads import poisson_workload

from dopd.control.calibration import CalibratedLatency
from dopd.control.cluster_models import build_models
from dopd.engine.plan import DecodeRun
from dopd.errors import DopdError
from dopd.perf import build_latency_model
from dopd.sim.api import SimConfig, TruthSpec
from dopd.sim.simulation import build_cluster, collect_result, run_simulation
from dopd.sim.truth import HardwareTruth, truth_latency_model
from dopd.types import SLO

SLO_ = SLO(ttft_s=0.5, tpot_s=0.1, attainment=0.9)
MODEL = build_latency_model("llama-3-8b", "a100-80gb")


def workload(n: int = 600, rate: float = 40.0):  # type: ignore[no-untyped-def]
    return poisson_workload(n, rate, (100, 2000), (20, 300), seed=3)


# ---------------------------------------------------------------------------------- the truth
def test_noise_is_seeded_and_mean_preserving() -> None:
    spec = TruthSpec(step_noise=0.2)
    a = HardwareTruth(MODEL, spec, seed=1)
    b = HardwareTruth(MODEL, spec, seed=1)
    c = HardwareTruth(MODEL, spec, seed=2)
    fa = np.array([a.step_factor(0.0) for _ in range(20000)])
    fb = np.array([b.step_factor(0.0) for _ in range(20000)])
    fc = np.array([c.step_factor(0.0) for _ in range(20000)])
    assert np.array_equal(fa, fb) and not np.array_equal(fa, fc)
    assert fa.mean() == pytest.approx(1.0, abs=0.01)
    assert np.std(np.log(fa)) == pytest.approx(0.2, rel=0.03)
    assert HardwareTruth(MODEL, TruthSpec(), seed=1).step_factor(5.0) == 1.0


def test_a_decode_run_draws_the_noise_of_a_mean_of_its_steps() -> None:
    truth = HardwareTruth(MODEL, TruthSpec(step_noise=0.2), seed=0)
    run = DecodeRun(0, 8, 8000, 100)
    factors = np.array([truth.run_factor(run, 0.0) for _ in range(20000)])
    assert factors.mean() == pytest.approx(1.0, abs=0.01)
    assert np.std(factors) == pytest.approx(math.sqrt(math.expm1(0.04) / 100), rel=0.05)
    base = truth.runner.run_time(run, 10)
    assert truth.run_time(run, 1.3, 10) == pytest.approx(1.3 * base)
    assert truth.steps_within(run, 1.3, 1.3 * base) == 10


def test_slowdown_from_a_time_on() -> None:
    truth = HardwareTruth(MODEL, TruthSpec(slowdown=1.25, slowdown_at_s=300.0), seed=0)
    assert truth.step_factor(299.9) == 1.0
    assert truth.step_factor(300.0) == 1.25
    with pytest.raises(DopdError, match="slowdown"):
        TruthSpec(slowdown=0.0)
    for bad in ({"step_noise": -0.1}, {"model_bias": -0.95}, {"slowdown_at_s": -1.0}):
        with pytest.raises(DopdError):
            TruthSpec(**bad)  # type: ignore[arg-type]


def test_truth_from_another_source() -> None:
    config = SimConfig(truth=TruthSpec(truth_calibration="preset:legacy2023"))
    models = build_models(config)
    t_belief = models.latency.step_time(1000, 1_000_000, 1, 0, 0)
    t_truth = truth_latency_model(config).step_time(1000, 1_000_000, 1, 0, 0)
    assert t_truth != pytest.approx(t_belief, rel=0.02)
    with pytest.raises(DopdError):
        truth_latency_model(SimConfig(truth=TruthSpec(truth_calibration="preset:nosuch")))


# ---------------------------------------------------------------------------------- isolation
def _reachable(root: object, limit: int = 200_000) -> Iterator[object]:
    """Every object reachable from ``root`` through attributes, slots and containers."""
    seen: set[int] = set()
    stack = [root]
    while stack and len(seen) < limit:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, type(None), type)):
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, np.ndarray) or (callable(obj) and not hasattr(obj, "__dict__")):
            continue
        else:
            stack.extend(vars(obj).values() if hasattr(obj, "__dict__") else ())
            for klass in type(obj).__mro__:
                for name in getattr(klass, "__slots__", ()):
                    if hasattr(obj, name):
                        stack.append(getattr(obj, name))


@pytest.mark.parametrize("policy, router", [("dopd", "auto"), ("colocated", "length-aware"),
                                            ("static:4:4", "auto")])
def test_the_control_plane_cannot_reach_the_truth(policy: str, router: str) -> None:
    truth_spec = TruthSpec(step_noise=0.1, model_bias=0.2)
    config = SimConfig(router=router, truth=truth_spec)
    cluster = build_cluster(workload(200), config, policy, SLO_, seed=1)
    cluster.run()
    forbidden = {id(cluster.truth), id(cluster.truth.model), id(cluster.truth.runner)}
    assert forbidden <= {id(o) for o in _reachable(cluster)}  # the walk does find them
    for root in (cluster.policy, cluster.router):
        held = list(_reachable(root))
        assert not [o for o in held if id(o) in forbidden], f"{root} reaches the truth"
        assert not [o for o in held if isinstance(o, HardwareTruth)]
        configs = [o for o in held if isinstance(o, SimConfig)]
        assert all(c.truth == TruthSpec() for c in configs)  # the truth spec is stripped
    assert cluster.router.context.latency is cluster.belief


def test_router_predicts_with_the_belief_not_the_truth() -> None:
    config = SimConfig(router="length-aware", online_calibration=False,
                       truth=TruthSpec(model_bias=0.3))
    cluster = build_cluster(workload(50), config, "colocated", SLO_, seed=0)
    predicted = cluster.router.context.latency.step_time(1000, 1_000_000, 1, 4, 4000)
    true = cluster.truth.model.step_time(1000, 1_000_000, 1, 4, 4000)
    assert predicted == pytest.approx(1.3 * true)
    alpha, slope = cluster.router.context.latency.decode_coefficients(8)
    t_alpha, t_slope = cluster.truth.model.decode_coefficients(8)
    assert (alpha, slope) == pytest.approx((1.3 * t_alpha, 1.3 * t_slope))
    # the policy's solver tables follow the belief too
    dopd = build_cluster(workload(50), config, "dopd", SLO_, seed=0).policy
    oracle = build_cluster(workload(50), dataclasses.replace(config, truth=TruthSpec()),
                           "dopd", SLO_, seed=0).policy
    assert np.allclose(dopd.inst.solo, 1.3 * oracle.inst.solo)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------- runs
def test_same_seed_same_run_and_noise_changes_it() -> None:
    config = SimConfig(truth=TruthSpec(step_noise=0.1, model_bias=-0.2))
    a = run_simulation(workload(), config, "dopd", SLO_, seed=5)
    b = run_simulation(workload(), config, "dopd", SLO_, seed=5)
    c = run_simulation(workload(), config, "dopd", SLO_, seed=6)
    assert np.array_equal(a.first_token_s, b.first_token_s, equal_nan=True)
    assert np.array_equal(a.finish_s, b.finish_s, equal_nan=True)
    assert a.decisions == b.decisions
    assert not np.array_equal(a.finish_s, c.finish_s, equal_nan=True)


def test_the_oracle_is_unchanged_by_calibration() -> None:
    on = run_simulation(workload(), SimConfig(), "dopd", SLO_, seed=1)
    off = run_simulation(workload(), SimConfig(online_calibration=False), "dopd", SLO_, seed=1)
    assert np.array_equal(on.finish_s, off.finish_s, equal_nan=True)


def test_no_calibration_differs_and_calibration_learns_the_bias() -> None:
    truth = TruthSpec(step_noise=0.1, model_bias=0.3)
    config = SimConfig(router="length-aware", truth=truth)
    cluster = build_cluster(workload(), config, "colocated", SLO_, seed=2)
    cluster.run()
    belief = cluster.belief
    assert isinstance(belief, CalibratedLatency)
    for kind in ("prefill", "decode"):
        assert belief.factor(kind) == pytest.approx(1.0, abs=0.05)  # 1.3 x exp(log(1/1.3))
    calibrated = collect_result(cluster, 0.0)
    off = run_simulation(workload(), dataclasses.replace(config, online_calibration=False),
                         "colocated", SLO_, seed=2)
    assert not np.array_equal(calibrated.first_token_s, off.first_token_s, equal_nan=True)
    errors = [r for r in off.decisions if r.get("action") == "prediction-error"]
    steps = [r for r in errors if r["what"] == "prefill-step"]
    assert steps and all(r["factor"] == pytest.approx(1.3) for r in steps)
    assert np.mean([r["mean_rel_err"] for r in steps]) == pytest.approx(0.3, abs=0.05)
    assert any(r["what"] == "ttft" for r in errors)


def test_the_belief_follows_a_slowdown() -> None:
    truth = TruthSpec(step_noise=0.1, slowdown=1.25, slowdown_at_s=8.0)
    cluster = build_cluster(workload(800, 50.0), SimConfig(truth=truth), "colocated", SLO_,
                            seed=0)
    cluster.run()
    assert cluster.belief.factor("decode") == pytest.approx(1.25, rel=0.05)
