"""run_simulation: the result's fields, progress reports, bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sim_workloads import poisson_workload

from dopd.control.policies.base import POLICIES, ClusterPolicy, PolicyContext, load_policies
from dopd.errors import DopdError
from dopd.sim.api import SimConfig
from dopd.sim.simulation import run_simulation
from dopd.types import SLO, Role


def test_result_is_filled() -> None:
    w = poisson_workload(120, 6.0, (100, 1500), (5, 200), seed=0)
    config = SimConfig(instances=3, tp=2, timeline_s=0.5)
    r = run_simulation(w, config, "static:1:2")
    assert len(r) == 120 and np.array_equal(r.request_id, np.arange(120))
    assert np.array_equal(r.prompt_tokens, w.prompt_tokens)
    assert r.policy == "static:1:2" and r.switches == 0 and r.events > 0 and r.wall_s > 0
    assert r.gpu_seconds == pytest.approx(3 * 2 * r.sim_end_s)
    tl = r.timeline
    assert tl.time_s[0] == 0 and np.allclose(np.diff(tl.time_s), 0.5)
    assert tl.time_s[-1] <= r.sim_end_s < tl.time_s[-1] + 0.5
    assert np.all(tl.prefill_instances == 1) and np.all(tl.decode_instances == 2)
    assert np.all(tl.mixed_instances == 0)
    # Each arrival is counted in exactly one interval [t - dt, t).
    counted = round(float(tl.arrivals_rps.sum()) * 0.5)
    assert counted == int(np.sum(w.arrival_s < tl.time_s[-1]))
    assert tl.running_decodes.max() > 0 and tl.queued_prefill_tokens.max() > 0


def test_progress_is_reported_in_at_most_about_a_hundred_steps() -> None:
    w = poisson_workload(1000, 50.0, (50, 300), (1, 50), seed=1)
    seen: list[float] = []
    run_simulation(w, SimConfig(instances=2), "colocated", progress=seen.append)
    assert 50 <= len(seen) <= 101
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)
    seen.clear()
    run_simulation(w, SimConfig(instances=3), "static:best", slo=SLO(1.0, 0.1),
                   progress=seen.append)
    assert len(seen) <= 102 and seen == sorted(seen) and seen[-1] == pytest.approx(1.0)


def test_a_calibrated_latency_model_can_be_used() -> None:
    w = poisson_workload(60, 2.0, (200, 800), (5, 50), seed=3)
    base = SimConfig(model="opt-13b", instances=2)
    fitted = run_simulation(w, dataclasses.replace(base, calibration="distserve:opt-13b:tp1"),
                            "static:1:1")
    roofline = run_simulation(w, base, "static:1:1")
    assert np.all(fitted.state == roofline.state)
    assert not np.allclose(fitted.finish_s, roofline.finish_s)


class FirstHalfPrefill(ClusterPolicy):
    """A plug-in policy: the first ``share`` percent of the instances prefill."""

    router = "round-robin"

    def __init__(self, share: int, context: PolicyContext) -> None:
        self.share = share
        self.name = f"test-half:{share}"
        self.saw_slo = context.slo

    def initial_roles(self, instances: int) -> list[Role]:
        p = max(1, instances * self.share // 100)
        return [Role.PREFILL] * p + [Role.DECODE] * (instances - p)


def test_a_registered_policy_runs_by_spec() -> None:
    if "test-half" not in POLICIES:
        POLICIES.register("test-half", lambda args, ctx: FirstHalfPrefill(int(args), ctx))
    assert "test-half" in load_policies().names()
    w = poisson_workload(40, 5.0, (100, 500), (5, 50), seed=2)
    r = run_simulation(w, SimConfig(instances=4), "test-half:50", slo=SLO(1.0, 0.1))
    assert r.policy == "test-half:50"
    assert set(r.prefill_instance.tolist()) == {0, 1}
    assert set(r.decode_instance.tolist()) == {2, 3}


def test_router_can_be_chosen() -> None:
    w = poisson_workload(90, 5.0, (100, 500), (5, 50), seed=2)
    r = run_simulation(w, SimConfig(instances=3, router="round-robin"), "colocated")
    counts = np.bincount(r.prefill_instance, minlength=3)
    assert counts.tolist() == [30, 30, 30]


@pytest.mark.parametrize(("policy", "config", "message"), [
    ("dopd-magic", SimConfig(instances=4), "unknown cluster policy 'dopd-magic'"),
    ("static:3:3", SimConfig(instances=8), "static:3:3 needs 6 instances, the cluster has 8"),
    ("static:0:4", SimConfig(instances=4), "needs >= 1 prefill"),
    ("static:2", SimConfig(instances=4), "static:P:D or static:best"),
    ("static:best", SimConfig(instances=4), "static:best needs an SLO"),
    ("static:best", SimConfig(instances=1), "at least 2 instances"),
    ("colocated:x", SimConfig(instances=2), "takes no arguments"),
    ("colocated", SimConfig(instances=2, router="nope"), "unknown router 'nope'"),
    ("colocated", SimConfig(instances=2, model="gpt-17"), "gpt-17"),
    ("colocated", SimConfig(instances=2, kv_link="carrier-pigeon"), "carrier-pigeon"),
])
def test_bad_input_raises_a_one_line_error(policy: str, config: SimConfig,
                                           message: str) -> None:
    w = poisson_workload(5, 1.0, (10, 20), (2, 3))
    with pytest.raises(DopdError, match=message) as info:
        run_simulation(w, config, policy)
    assert "\n" not in str(info.value)
