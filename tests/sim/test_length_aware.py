"""The length-aware router in the simulator: each feature's effect, and conservation with all on."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from sim_workloads import merge, poisson_columns

from dopd.control.policies.base import Action, ClusterPolicy, ClusterView, SwitchRole
from dopd.sim.api import SimConfig, SimResult
from dopd.sim.cluster import SimCluster
from dopd.sim.simulation import build_cluster, collect_result
from dopd.types import SLO, InstanceState, RequestState, Role
from dopd.workload import Workload

SLO_ = SLO(ttft_s=1.0, tpot_s=0.05)
ALL_OFF = "length-aware:ttft=off,order=fcfs,lane=off,decode=off,bypass=off,admit=off"


def run(workload: Workload, instances: int, policy: str | ClusterPolicy, router: str,
        slo: SLO = SLO_, **config: object) -> tuple[SimCluster, SimResult]:
    cluster = build_cluster(workload, SimConfig(instances=instances, router=router,
                                                **config), policy, slo=slo)  # type: ignore[arg-type]
    cluster.run()
    cluster.check()
    return cluster, collect_result(cluster, 0.0)


def ttft(r: SimResult) -> np.ndarray:
    return r.first_token_s - r.arrival_s


def tpot(r: SimResult) -> np.ndarray:
    return (r.finish_s - r.first_token_s) / np.maximum(r.output_tokens - 1, 1)


def met(r: SimResult, slo: SLO = SLO_) -> np.ndarray:
    ok = (r.state == int(RequestState.FINISHED)) & (ttft(r) <= slo.ttft_s)
    return ok & ((tpot(r) <= slo.tpot_s) | (r.output_tokens <= 1))


def heavy_tailed_mix(seed: int = 1) -> Workload:
    """Mooncake-like heavy tail: short prompts at 20/s and a long one (30k-60k tokens) every
    few seconds; p99 / p50 of the prompt lengths is about 60."""
    return merge(poisson_columns(1200, 20.0, (200, 800), (50, 150), seed=seed),
                 poisson_columns(18, 0.3, (30_000, 60_000), (50, 150), seed=seed + 1))


class Switcher(ClusterPolicy):
    """static 2:2 that swaps a prefill and a decode instance at 3 s and swaps back at 9 s."""

    name = "switcher"
    router = "length-aware"
    wants_ticks = True
    tick_s = 1.0

    def initial_roles(self, instances: int) -> list[Role]:
        return [Role.PREFILL, Role.PREFILL, Role.DECODE, Role.DECODE]

    def on_tick(self, now: float, view: ClusterView) -> Sequence[Action]:
        if now not in (3.0, 9.0):
            return ()
        active = [v for v in view.instances if v.state == InstanceState.ACTIVE]
        p = next(v for v in active if v.role == Role.PREFILL)
        d = next(v for v in active if v.role == Role.DECODE)
        return (SwitchRole(p.instance_id, Role.DECODE), SwitchRole(d.instance_id, Role.PREFILL))


def test_every_request_ends_and_all_kv_is_freed_with_every_option_on() -> None:
    # Overloaded, heavy-tailed, KV-tight, with short prompts to bypass and role switches that
    # drain short-first queues: run() + check() assert conservation and KV accounting.
    w = merge(poisson_columns(500, 40.0, (50, 3000), (1, 400), seed=3),
              poisson_columns(20, 2.0, (20_000, 40_000), (10, 300), seed=4))
    cluster, result = run(w, 4, Switcher(), "length-aware:lane_window=100", kv_mem_util=0.3)
    states = set(result.state.tolist())
    assert states <= {int(RequestState.FINISHED), int(RequestState.REJECTED)}
    assert int(RequestState.REJECTED) in states and int(RequestState.FINISHED) in states
    assert cluster.life.switches == 4
    router = cluster.router
    assert router.bypassed > 0 and router.rejected > 0  # type: ignore[attr-defined]
    assert router.window.lanes(2) >= 1  # type: ignore[attr-defined]
    for rid, reason in result.reason.items():
        assert result.state[rid] == int(RequestState.REJECTED) and reason


def test_with_every_feature_off_it_is_pd_pair() -> None:
    w = merge(poisson_columns(400, 12.0, (20, 6000), (1, 300), seed=5))
    _, a = run(w, 4, "static:2:2", "pd-pair")
    _, b = run(w, 4, "static:2:2", ALL_OFF)
    for name in ("state", "first_token_s", "finish_s", "prefill_instance", "decode_instance"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name


def test_short_first_lowers_short_prompt_ttft_and_aging_bounds_the_cost() -> None:
    # A burst of 25 long prompts (about 7 s of prefill) while short ones keep arriving.
    w = merge(poisson_columns(100, 5.0, (100, 600), (10, 50), seed=6),
              poisson_columns(25, 12.0, (4000, 6000), (10, 50), seed=7, start_s=2.0))
    short = w.prompt_tokens <= 600
    base = "length-aware:lane=off,bypass=off,admit=off"
    _, fcfs = run(w, 3, "static:1:2", base + ",order=fcfs")
    _, sf = run(w, 3, "static:1:2", base)  # aging after 5 x the TTFT SLO
    _, early = run(w, 3, "static:1:2", base + ",aging_s=1")
    p90 = {name: np.quantile(ttft(r)[short], 0.9) for name, r in
           (("fcfs", fcfs), ("sf", sf), ("early", early))}
    assert p90["sf"] < 0.3 * p90["fcfs"]
    # Long prompts pay a bounded price; aging them after 1 s gives the burst back its order.
    assert ttft(sf)[~short].max() < ttft(fcfs)[~short].max() + 1.0
    assert p90["early"] > 3 * p90["sf"]


def test_a_long_prompt_lane_shields_short_prompts_from_a_heavy_tail() -> None:
    w = heavy_tailed_mix()
    short = w.prompt_tokens < 1000
    base = "length-aware:bypass=off,admit=off"
    lane_cluster, lane = run(w, 6, "static:4:2", base)
    _, pooled = run(w, 6, "static:4:2", base + ",lane=off")
    lanes = lane_cluster.router.window.lanes(4)  # type: ignore[attr-defined]
    assert 1 <= lanes <= 3
    # Once the lane is open (after 100 arrivals), long prompts keep off the general instance.
    late_long = ~short & (w.arrival_s > 10.0)
    assert late_long.sum() >= 10
    assert 0 not in set(lane.prefill_instance[late_long].tolist())
    p90_lane, p90_pooled = (np.quantile(ttft(r)[short], 0.9) for r in (lane, pooled))
    assert p90_lane < 0.5 * p90_pooled
    assert np.mean(ttft(lane)[short] <= 0.25) > np.mean(ttft(pooled)[short] <= 0.25) + 0.03


def test_bypass_cuts_short_prompt_ttft_without_breaking_tpot() -> None:
    # One prefill instance is the bottleneck; the two decode instances have slack.
    w = merge(poisson_columns(300, 6.0, (100, 400), (50, 200), seed=1),
              poisson_columns(150, 3.0, (2000, 5000), (50, 200), seed=2))
    short = w.prompt_tokens <= 400
    base = "length-aware:admit=off"
    cluster, on = run(w, 3, "static:1:2", base)
    _, off = run(w, 3, "static:1:2", base + ",bypass=off")
    bypassed = on.prefill_instance == on.decode_instance
    assert cluster.router.bypassed == int(bypassed.sum()) > 0.3 * short.sum()  # type: ignore[attr-defined]
    assert set(on.prefill_instance[bypassed].tolist()) <= {1, 2}  # the decode instances
    # a long prompt's step would break the 50 ms TPOT SLO of the decodes it joins
    assert short[bypassed].all()
    assert on.kv_bytes_moved < off.kv_bytes_moved
    assert np.median(ttft(on)[short]) < 0.5 * np.median(ttft(off)[short])
    assert np.quantile(ttft(on)[short], 0.9) < 0.5 * np.quantile(ttft(off)[short], 0.9)
    assert np.quantile(tpot(on), 0.99) <= SLO_.tpot_s
    assert np.quantile(tpot(on), 0.9) <= 1.2 * np.quantile(tpot(off), 0.9)
    assert met(on).mean() >= met(off).mean()


@pytest.mark.parametrize("seed", [0, 1])
def test_admission_control_rejects_only_hopeless_requests_and_helps_the_rest(seed: int) -> None:
    # About 1.5 x what the one prefill instance can take.
    w = merge(poisson_columns(600, 10.0, (500, 4000), (20, 200), seed=seed))
    _, on = run(w, 2, "static:1:1", "length-aware:bypass=off")  # admit_k 1
    _, loose = run(w, 2, "static:1:1", "length-aware:bypass=off,admit_k=1.5")
    _, off = run(w, 2, "static:1:1", "length-aware:bypass=off,admit=off")
    rejected = on.state == int(RequestState.REJECTED)
    assert rejected.sum() > 50
    assert all("predicted TTFT" in on.reason[int(i)] for i in np.flatnonzero(rejected))
    # Hopeless: served anyway, few of them would have met the SLO (none at 1.5 x the SLO)...
    assert met(off)[rejected].mean() <= 0.12
    assert met(off)[loose.state == int(RequestState.REJECTED)].mean() <= 0.02
    # ...and turning them away lets far more of the others meet it, and more overall; the
    # tighter bound turns away a few that would have made it, and wins overall.
    assert met(on)[~rejected].mean() > met(off)[~rejected].mean() + 0.3
    assert met(on).mean() > met(loose).mean() > met(off).mean() + 0.3


def test_admission_control_rejects_nothing_under_light_load() -> None:
    w = heavy_tailed_mix(seed=8)
    cluster, result = run(w, 6, "static:4:2", "length-aware", slo=SLO(ttft_s=10.0, tpot_s=0.1))
    assert cluster.router.rejected == 0  # type: ignore[attr-defined]
    assert np.all(result.state == int(RequestState.FINISHED))
