"""The ``sla-planner`` cluster policy: NVIDIA Dynamo's throughput-based SLA planner.

Mirrors Dynamo's planner (``planner_core.py``, throughput-based scaling):

- every ``interval`` seconds (Dynamo's default is 180 s; ours 60 s, as our traces shift
  faster) it measures the request count (at arrival) and the mean ISL, OSL, TTFT and ITL of
  the requests that finished in the interval, and feeds the count, ISL and OSL to one load
  predictor each (``forecast=``, default ``arima`` as in Dynamo);
- correction factors: ``p = observed TTFT / profiled TTFT(ISL)`` (the profile has no queue)
  and ``d = observed ITL / profiled ITL(concurrency per decode instance, ISL + OSL / 2)``;
- prefill replicas ``ceil(rate x ISL x min(1, p) / prefill_throughput(ISL))``, the throughput
  profiled one prompt at a time (``ISL / TTFT(ISL)``); decode replicas
  ``ceil(rate x OSL / decode_throughput)``, the best per-instance throughput ``B / T(B)`` whose
  step time at context ``ISL + OSL / 2`` stays within ``ITL SLO / d`` (and whose KV fits);
  at least ``min_endpoint`` (1) each; both are scaled proportionally to the budget (Dynamo's
  ``proportional_clamp_pair`` with ``min_gpu_budget = max_gpu_budget``: the pool is pinned to
  the instance budget, as the other policies' is); with the ``elastic`` flag only a total over
  the budget is scaled down (Dynamo's historical ceiling-only budget, which scales in freely);
- replicas change by starting instances (cold start) and draining and stopping others: no role
  switch, no hysteresis, no queueing term, no length variance, no check that the survivors of
  a scale-in can absorb the load. Means only, as Dynamo.

All profiled figures come from the simulator's latency model (:class:`InstanceModel`). The
initial split is the same formula on a prior load (the Azure conversation trace's mean lengths)
scaled to the whole budget. Spec: ``sla-planner[:key=value...]`` with ``interval``,
``forecast``, ``min_endpoint``, and the flags ``nocorrection`` and ``elastic``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dopd.control.forecast import make_forecaster
from dopd.control.forecast.base import Forecaster
from dopd.control.manager import ManagerConfig, PDManager, Split, active_split, committed_split
from dopd.control.manager.decisions import DecisionLog
from dopd.control.policies.base import POLICIES, Action, ClusterPolicy, ClusterView, PolicyContext
from dopd.control.policies.signals import option_float, option_int, parse_options
from dopd.control.ratio import InstanceModel
from dopd.errors import require
from dopd.types import SLO, RequestOutcome, RequestState, Role

KEYS = {"interval", "forecast", "min_endpoint"}
FLAGS = {"nocorrection", "elastic"}
PRIOR_ISL, PRIOR_OSL = 1155.0, 211.0


class SlaPlannerPolicy(ClusterPolicy):
    """Dynamo-style throughput planner (see the module doc); ``decisions`` is its log."""

    wants_ticks = True
    router = "pd-pair"

    def __init__(self, args: str, context: PolicyContext) -> None:
        require(context.slo is not None, "policy sla-planner needs an SLO (TTFT and ITL targets)")
        assert context.slo is not None
        flags, values = parse_options("sla-planner", args, FLAGS, KEYS)
        self.slo: SLO = context.slo
        self.budget = context.config.instances
        require(self.budget >= 2, f"policy sla-planner needs at least 2 instances, the cluster "
                f"has {self.budget}")
        self.interval_s = option_float("sla-planner", values, "interval", 60.0)
        self.min_endpoint = option_int("sla-planner", values, "min_endpoint", 1)
        require(2 * self.min_endpoint <= self.budget,
                "policy sla-planner: min_endpoint leaves no room in the budget")
        self.correct = "nocorrection" not in flags
        self.pinned = "elastic" not in flags
        spec = values.get("forecast", "arima")
        self._predictors: dict[str, Forecaster] = {
            k: make_forecaster(spec) for k in ("count", "isl", "osl")}
        self.name = "sla-planner" + "".join(f":{a.strip()}" for a in args.split(":")
                                             if a.strip())
        self.inst = InstanceModel.from_cluster_config(context.config, context.latency)
        self.manager = PDManager(ManagerConfig(
            confirm=1, margin=1, reverse_confirm=1, dwell_s=0.0, max_changes=self.budget,
            alarm_changes=self.budget, max_in_flight=self.budget, switch=False, elastic=True,
            scale_in_confirm=1))
        self.log = DecisionLog(self.name)
        self.decisions = self.log.records
        self.p_corr = 1.0
        self.d_corr = 1.0
        self._arrived = 0
        self._done: list[tuple[int, int, float, float | None, float]] = []
        self._next = self.interval_s

    # ------------------------------------------------------------------ the profile
    def prefill_ttft(self, isl: float) -> float:
        """Profiled TTFT of one prompt of ``isl`` tokens, alone (no queue)."""
        solo, _, _ = self.inst.prefill_tables(np.array([max(isl, 1.0)]))
        return float(solo[0])

    def prefill_throughput(self, isl: float) -> float:
        """Profiled prefill tokens/s of one instance: ``ISL / TTFT(ISL)``."""
        return max(isl, 1.0) / self.prefill_ttft(isl)

    def decode_itl(self, concurrency: float, context: float) -> float:
        """Profiled decode step time at a batch of ``concurrency`` and mean ``context``."""
        return float(self.inst.decode_step(np.array([max(concurrency, 1.0)]), context)[0])

    def decode_throughput(self, itl: float, context: float) -> float:
        """Best tokens/s of one decode instance with step time <= ``itl`` at ``context``
        (batch limited by ``max_num_seqs`` and KV memory); the batch-1 rate if none meets it."""
        cap = min(self.inst.max_num_seqs, self.inst.kv_batch_limit(max(context, 1.0)))
        b = np.arange(1, max(int(cap), 1) + 1, dtype=np.float64)
        step = self.inst.decode_step(b, context)
        ok = step <= itl
        if not ok.any():
            return 1.0 / float(step[0])
        return float(np.max(b[ok] / step[ok]))

    def replicas(self, rate: float, isl: float, osl: float) -> Split:
        """Dynamo's replica counts for a predicted load, within the budget."""
        p_demand = rate * isl * min(1.0, self.p_corr)
        n_p = math.ceil(p_demand / self.prefill_throughput(isl))
        itl = self.slo.tpot_s / self.d_corr if self.d_corr > 0 else self.slo.tpot_s
        n_d = math.ceil(rate * osl / self.decode_throughput(itl, isl + osl / 2))
        n_p, n_d = max(n_p, self.min_endpoint), max(n_d, self.min_endpoint)
        if n_p + n_d > self.budget or (self.pinned and n_p + n_d < self.budget):
            scale = self.budget / (n_p + n_d)
            n_p = max(self.min_endpoint, round(n_p * scale))
            n_d = max(self.min_endpoint, round(self.budget - n_p))
            n_p = min(n_p, self.budget - n_d)
        return Split(n_p, n_d)

    # ------------------------------------------------------------------ hooks
    def initial_roles(self, instances: int) -> list[Role]:
        p_share = PRIOR_ISL / self.prefill_throughput(PRIOR_ISL)
        ctx = PRIOR_ISL + PRIOR_OSL / 2
        d_share = PRIOR_OSL / self.decode_throughput(self.slo.tpot_s, ctx)
        p = min(max(round(instances * p_share / (p_share + d_share)), 1), instances - 1)
        return [Role.PREFILL] * p + [Role.DECODE] * (instances - p)

    def on_arrival(self, now: float, request_id: int, prompt_tokens: int,
                   output_tokens: int) -> None:
        self._arrived += 1

    def on_request_done(self, now: float, outcome: RequestOutcome) -> None:
        if outcome.state == RequestState.FINISHED and outcome.ttft_s is not None:
            e2e = outcome.e2e_s if outcome.e2e_s is not None else 0.0
            self._done.append((outcome.prompt_tokens, outcome.output_tokens, outcome.ttft_s,
                               outcome.tpot_s, e2e))

    def on_tick(self, now: float, view: ClusterView) -> Sequence[Action]:
        self.manager.track(now, view)
        if now + 1e-9 < self._next:
            return ()
        while self._next <= now + 1e-9:
            self._next += self.interval_s
        count, done = self._arrived, self._done
        self._arrived, self._done = 0, []
        if not done:  # Dynamo skips an interval without valid metrics
            self.log.add(now, reason="no finished request in the interval: no adjustment",
                         current=committed_split(view), observation={"requests": count})
            return ()
        isl = float(np.mean([d[0] for d in done]))
        osl = float(np.mean([d[1] for d in done]))
        ttft = float(np.mean([d[2] for d in done]))
        itls = [d[3] for d in done if d[3] is not None]
        duration = float(np.mean([d[4] for d in done]))
        running = active_split(view)
        if self.correct:
            self.p_corr = ttft / self.prefill_ttft(isl)
            if itls and running.decode >= 1:
                concurrency = count / running.decode * duration / self.interval_s
                self.d_corr = float(np.mean(itls)) / self.decode_itl(concurrency,
                                                                     isl + osl / 2)
        preds = self._predictors
        preds["count"].update(float(count))
        preds["isl"].update(isl)
        preds["osl"].update(osl)
        next_count = max(preds["count"].predict().mean, 0.0)
        next_isl = max(preds["isl"].predict().mean, 1.0)
        next_osl = max(preds["osl"].predict().mean, 1.0)
        rate = next_count / self.interval_s
        target = self.replicas(rate, next_isl, next_osl)
        decision = self.manager.step(now, view, target)
        self.log.add(
            now, reason=f"p_corr {self.p_corr:.2f} d_corr {self.d_corr:.2f}: {decision.reason}",
            actions=decision.actions, target=target, current=decision.current,
            observation={"requests": count, "isl": isl, "osl": osl, "ttft_mean": ttft,
                         "itl_mean": float(np.mean(itls)) if itls else None},
            forecast={"rate": rate, "isl": next_isl, "osl": next_osl})
        return decision.actions


def _factory(args: str, context: PolicyContext) -> ClusterPolicy:
    return SlaPlannerPolicy(args, context)


POLICIES.register("sla-planner", _factory)
