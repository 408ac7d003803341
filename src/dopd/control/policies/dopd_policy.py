"""The ``dopd`` cluster policy: monitor -> forecaster -> P/D solver -> manager.

Every ``interval`` seconds it snapshots the arrival monitor (demand measured at arrival; output
lengths from recently finished requests, raised to the decode side's Little's-law estimate
when that is clearly larger, see :meth:`DopdPolicy._forecast`), folds the window into the
forecaster (the rate's model, ``ewma`` by default; length moments as last measured), builds
the solver's load (forecast rate and length moments, the window's prompt-length histogram, the
arrivals' burstiness), solves the fixed pool (or the elastic one) with the online correction
factors, keeps the running split on a near-tie (``stick``), adds decode feedback when the
decode side alone stays short (``nudge``), and hands the split to
:class:`~dopd.control.manager.PDManager`. Between plans, an SLO alarm
(:func:`~.signals.slo_alarm`) lets the manager act on the last target at once. Every plan is
logged (:attr:`DopdPolicy.decisions`) with what was predicted for the target split, and later
what was observed. Options: :mod:`.options`.

The initial split (``init=auto``) is the solver's answer for a prior load (prompt and output
lengths like the Azure conversation trace) at the rate where the best split just meets the
attainment target: a busy cluster's split, corrected at the first plans.
"""

from __future__ import annotations

import importlib
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dopd.control.forecast import LoadForecast, MultiForecaster
from dopd.control.manager import (
    Alarm,
    PDManager,
    Split,
    active_split,
    committed_split,
    in_transition,
)
from dopd.control.manager.decisions import DecisionLog
from dopd.control.monitor import ArrivalMonitor, WindowStats
from dopd.control.policies.base import POLICIES, Action, ClusterPolicy, ClusterView, PolicyContext
from dopd.control.policies.dopd_estimates import (
    PRIOR,
    busy_rate,
    decode_output_estimate,
    explain_move,
    prior_stats,
    split_prediction,
)
from dopd.control.policies.hybrid import HybridMode
from dopd.control.policies.mixed_budget import mixed_budgets
from dopd.control.policies.options import DopdOptions
from dopd.control.policies.signals import Observed, OutcomeWindow, pressure, slo_alarm
from dopd.control.ratio import (
    CorrectionFactors,
    InstanceModel,
    LengthDist,
    PDPlan,
    SolverConfig,
    WorkloadStats,
    predict,
    solve,
)
from dopd.control.ratio.arrivals import burstiness
from dopd.control.ratio.stats import MIN_RATE
from dopd.control.routing.router import load_routers
from dopd.errors import require
from dopd.types import RequestOutcome, RequestState, Role

LENGTH_AWARE_MODULE = "dopd.control.routing.length_aware"
"""Where the ``length-aware`` router lives; ``pd-pair`` is used while it cannot be imported."""

_SCV_WINDOW_S = 60.0
LITTLE_ALPHA = 0.6
LITTLE_MARGIN = 1.2
"""The Little's-law output estimate is smoothed (weight of the newest plan) and replaces the
finished requests' mean only when it exceeds it by this factor: a shift, not noise."""
_MIN_CALIBRATION_SAMPLES = 20


class DopdPolicy(ClusterPolicy):
    """DOPD's dynamic P/D split (see the module doc). ``decisions`` is the decision log."""

    wants_ticks = True

    def __init__(self, options: DopdOptions, context: PolicyContext) -> None:
        require(context.slo is not None, "policy dopd needs an SLO (TTFT and TPOT targets)")
        assert context.slo is not None
        require(context.config.instances >= 2,
                f"policy dopd needs at least 2 instances, the cluster has "
                f"{context.config.instances}")
        self.options = options
        self.name = options.spec
        self.slo = context.slo
        self.budget = context.config.instances
        self.router = self._router(options.length_aware)
        self.inst = InstanceModel.from_cluster_config(context.config, context.latency)
        self._config = context.config
        self._belief = context.latency
        self._belief_version = getattr(context.latency, "version", 0)
        self.solver_config = SolverConfig(variance_term=options.variance,
                                          max_instances=max(self.budget, 2),
                                          cold_start_s=context.config.cold_start_s)
        window = options.monitor_window_s
        self.monitor = ArrivalMonitor(window, output_window_s=max(options.output_window_s,
                                                                  window))
        self.forecaster = None
        if options.forecast is not None:
            specs = {"rate": options.forecast}
            specs.update(dict.fromkeys(("mean_in", "m2_in", "mean_out", "m2_out"),
                                       options.lengths))
            self.forecaster = MultiForecaster(specs, defaults=PRIOR)
        self.outcomes = OutcomeWindow(options.interval_s, self.slo)
        self.recent = OutcomeWindow(max(2.0 * options.interval_s, 10.0), self.slo)
        self.attained = OutcomeWindow(max(10.0 * options.interval_s, 20.0), self.slo)
        self.manager = PDManager(options.manager)
        self.log = DecisionLog(self.name)
        self.decisions = self.log.records
        self.correction = CorrectionFactors()
        self._arrivals: deque[float] = deque()
        self._next_plan = options.interval_s
        self._target: Split | None = None
        self._last_fc: dict[str, float] = dict(PRIOR)
        self._last_plan: tuple[WorkloadStats, Split] | None = None
        self._basis: tuple[LoadForecast, WorkloadStats, PDPlan] | None = None
        self._tok_s = self._prefill_tokens_per_s(PRIOR["mean_in"])
        self._little: float | None = None
        self._short: tuple[str, int] = ("", 0)
        self.hybrid = None if options.hybrid is None else HybridMode(
            options.hybrid, self.inst, self.slo, self.budget,
            start_mixed=options.init in ("auto", "mixed"))
        tokens = options.mixed_tokens
        self.mixed_prefill_tokens, self.mixed_chunk_table, bound = mixed_budgets(
            context.latency, self.slo.tpot_s, context.config.max_batched_tokens,
            tokens, options.mixed_share, options.mixed_step_share)
        if self.hybrid is not None and options.chunk_bound:
            self.hybrid.mixed_step = bound

    @staticmethod
    def _router(length_aware: bool) -> str:
        """The length-aware router when it is available (registered and importable), else
        ``pd-pair``."""
        if length_aware and "length-aware" in load_routers():
            try:
                importlib.import_module(LENGTH_AWARE_MODULE)
            except ImportError:
                return "pd-pair"
            return "length-aware"
        return "pd-pair"

    def _prefill_tokens_per_s(self, mean_in: float) -> float:
        n = np.array([max(mean_in, 1.0)])
        _, fixed, var = self.inst.prefill_tables(n)
        per = float(var[0] + fixed[0] / self.inst.batch_limit(n)[0])
        return float(n[0]) / max(per, 1e-9)

    # ------------------------------------------------------------------ start
    def initial_roles(self, instances: int) -> list[Role]:
        if self.options.init == "mixed" or (self.hybrid is not None and self.hybrid.mixed):
            return [Role.MIXED] * instances
        given = self.options.initial_split()
        if given is not None:
            p, d = given
            require(p + d == instances, f"policy dopd: init={p}/{d} needs {p + d} instances, "
                    f"the cluster has {instances}")
        else:
            rate = busy_rate(self.inst, self.slo, instances, self.solver_config)
            plan = solve(prior_stats(rate), self.inst, self.slo, instances,
                         config=self.solver_config)
            p, d = plan.n_prefill, plan.n_decode
        self._target = Split(p, d)
        return [Role.PREFILL] * p + [Role.DECODE] * d

    # ------------------------------------------------------------------ observation
    def on_arrival(self, now: float, request_id: int, prompt_tokens: int,
                   output_tokens: int) -> None:
        self.monitor.observe_arrival(now, prompt_tokens)
        self._arrivals.append(now)
        cutoff = now - _SCV_WINDOW_S
        while self._arrivals and self._arrivals[0] < cutoff:
            self._arrivals.popleft()

    def on_request_done(self, now: float, outcome: RequestOutcome) -> None:
        if outcome.state == RequestState.FINISHED:
            self.monitor.observe_output(now, outcome.output_tokens)
        self.outcomes.observe(now, outcome)
        self.recent.observe(now, outcome)
        self.attained.observe(now, outcome)

    # ------------------------------------------------------------------ control
    def on_tick(self, now: float, view: ClusterView) -> Sequence[Action]:
        self.manager.track(now, view)
        if now + 1e-9 >= self._next_plan:
            while self._next_plan <= now + 1e-9:
                self._next_plan += self.options.interval_s
            return self._plan(now, view)
        if self._target is None:
            return ()
        alarm = slo_alarm(pressure(view, self._tok_s), self.recent.summary(now), self.slo)
        if not alarm.active:
            return ()
        decision = self.manager.step(now, view, self._target, alarm, confirming=False)
        if decision.actions:
            extra = self._explained(decision.current, decision.target,
                                    f"SLO alarm ({alarm.detail})")
            self.log.add(now, reason=f"alarm: {decision.reason}", actions=decision.actions,
                         target=decision.target, current=decision.current,
                         observation={"alarm": alarm.detail}, **extra)
        return decision.actions

    def _explained(self, current: Split, target: Split, trigger: str = "",
                   predicted: dict[str, float] | None = None) -> dict[str, Any]:
        """The decision log's reason fields for a move on the last plan (:func:`explain_move`)."""
        def predict_split(plan: PDPlan, stats: WorkloadStats, split: Split
                          ) -> dict[str, float] | None:
            return split_prediction(plan, stats, split, self.inst, self.slo,
                                    self.solver_config, self.correction)
        return explain_move(self.slo, self._basis, current, target, predict_split, trigger,
                            predicted)

    def _forecast(self, now: float, snap: WindowStats, view: ClusterView) -> LoadForecast:
        """The next window's load. Output lengths are known only when requests finish, so
        the finished ones are biased short after a shift to longer outputs (and during the
        first output window, when only short ones have finished). The decode side's own
        throughput gives a lag-free estimate by Little's law: tokens decoded per second over
        the arrival rate, plus the first token. The larger of the two is used (the second
        moment keeps the finished requests' CV)."""
        warm = now >= self.monitor.output_window_s
        mean_out = snap.mean_out if warm else math.nan
        m2_out = snap.m2_out if warm else math.nan
        little = decode_output_estimate(view, snap.rate_rps)
        if little is not None:
            prev = self._little
            self._little = little if prev is None else prev + LITTLE_ALPHA * (little - prev)
        if self._little is not None and self.options.little:
            little = self._little
            base = mean_out if not math.isnan(mean_out) else self._last_fc["mean_out"]
            if little > LITTLE_MARGIN * base:
                scv = (m2_out / mean_out**2) if not math.isnan(mean_out) and mean_out > 0 \
                    else self._last_fc["m2_out"] / self._last_fc["mean_out"] ** 2
                mean_out, m2_out = little, little * little * max(scv, 1.0)
        if self.forecaster is not None:
            self.forecaster.update_values(rate=snap.rate_rps, mean_in=snap.mean_in,
                                          m2_in=snap.m2_in, mean_out=mean_out, m2_out=m2_out)
            return self.forecaster.predict()
        last = self._last_fc
        for key, value in (("mean_in", snap.mean_in), ("m2_in", snap.m2_in),
                           ("mean_out", mean_out), ("m2_out", m2_out)):
            if not math.isnan(value):
                last[key] = value
        return LoadForecast(snap.rate_rps, snap.rate_rps, last["mean_in"],
                            max(last["m2_in"], last["mean_in"] ** 2), last["mean_out"],
                            max(last["m2_out"], last["mean_out"] ** 2))

    def _stats(self, fc: LoadForecast, snap: WindowStats) -> WorkloadStats:
        mean_in = max(fc.mean_in, 1.0)
        m2_in = max(fc.m2_in, mean_in * mean_in)
        if sum(snap.in_hist) > 0:
            isl = LengthDist.from_bins(snap.in_hist_edges, snap.in_hist, mean_in, m2_in)
        else:
            isl = LengthDist.from_moments(mean_in, m2_in)
        mean_out = max(fc.mean_out, 1.5)
        osl = LengthDist.from_moments(mean_out, max(fc.m2_out, mean_out * mean_out))
        upper = max(fc.rate_upper, fc.rate, MIN_RATE)
        rate = upper if self.options.rate == "upper" else max(fc.rate, MIN_RATE)
        scv = burstiness(np.fromiter(self._arrivals, dtype=np.float64)) \
            if len(self._arrivals) >= 8 else 1.0
        return WorkloadStats(rate, isl, osl, rate_upper=max(upper, rate), arrival_scv=scv)

    def _calibrate(self, view: ClusterView, observed: Observed) -> None:
        """Fold the last interval's observed P90s into the correction factors, against the raw
        prediction for the split that ran (only when it ran unchanged and served enough)."""
        if not self.options.calibrate or self._last_plan is None:
            return
        stats, split = self._last_plan
        if observed.finished < _MIN_CALIBRATION_SAMPLES or active_split(view) != split \
                or in_transition(view) or split.prefill < 1 or split.decode < 1:
            return
        raw = predict(stats, self.inst, self.slo, split.prefill, split.decode,
                      self.solver_config)
        self.correction = self.correction.update(observed.ttft_p90, raw.ttft_p90,
                                                 observed.tpot_p90, raw.tpot_p90)

    def _target_of(self, plan: PDPlan, current: Split) -> Split:
        """The split to aim for: the plan's, unless the committed split is predicted within
        ``stick`` attainment of it (a switch costs a drain, so a near-tie keeps what runs)."""
        best = Split(plan.n_prefill, plan.n_decode)
        if plan.mode == "fixed" and current.mixed == 0 and current != best \
                and current.total == self.budget and current.prefill >= 1 \
                and current.decode >= 1:
            now = plan.splits[current.prefill - 1]
            if now.attainment >= plan.attainment - self.options.stick:
                best = current
        if not self.options.mixed or plan.mode != "fixed":
            return best
        q = plan.quantile
        rows = plan.splits
        need_p = next((r.n_prefill for r in rows if r.ttft_attainment >= q), plan.n_prefill)
        need_d = next((r.n_decode for r in reversed(rows) if r.tpot_attainment >= q),
                      plan.n_decode)
        spare = self.budget - need_p - need_d
        if spare <= 0:
            return Split(plan.n_prefill, plan.n_decode)
        return Split(need_p, need_d, spare)

    def _nudged(self, target: Split, current: Split, alarm: Alarm) -> Split:
        """Feedback over the model for the decode side: when it alone has been short at
        ``nudge`` consecutive plans and the plan gives it nothing, move one instance to it
        anyway. Output lengths are learned late (when requests finish), so after a shift to
        longer outputs the model's decode demand lags; prompt lengths are measured at arrival,
        so the prefill side needs no such help (and its alarms fire on every burst). The
        manager's reversal rule and dwell time keep this from oscillating."""
        short_p = alarm.prefill and not alarm.decode
        short_d = alarm.decode and not alarm.prefill
        side = "p" if short_p else "d" if short_d else ""
        self._short = (side, self._short[1] + 1) if side and side == self._short[0] \
            else (side, 1 if side else 0)
        if not side or self._short[1] < self.options.nudge or self.options.elastic \
                or current.mixed or target.mixed:
            return target
        if short_d and target.decode <= current.decode and current.prefill > 1:
            return Split(current.prefill - 1, current.decode + 1)
        return target

    def _refresh_model(self) -> None:
        """Re-tabulate the instance model when the (calibrated) latency belief has moved."""
        version = getattr(self._belief, "version", 0)
        if version != self._belief_version:
            self._belief_version = version
            self.inst = InstanceModel.from_cluster_config(self._config, self._belief)
            if self.hybrid is not None:
                self.hybrid.inst = self.inst

    def _plan(self, now: float, view: ClusterView) -> Sequence[Action]:
        self._refresh_model()
        snap = self.monitor.snapshot(now)
        observed = self.outcomes.summary(now)
        self.log.settle(now, {"finished": observed.finished, "ttft_p90": observed.ttft_p90,
                              "tpot_p90": observed.tpot_p90, "attainment": observed.attainment})
        self._calibrate(view, observed)
        fc = self._forecast(now, snap, view)
        self._tok_s = self._prefill_tokens_per_s(fc.mean_in)
        if snap.count == 0 and self.forecaster is None:
            return ()
        stats = self._stats(fc, snap)
        if self.options.elastic:
            plan = solve(stats, self.inst, self.slo, None, config=self.solver_config,
                         correction=self.correction, current=len(view.alive()))
        else:
            plan = solve(stats, self.inst, self.slo, self.budget, config=self.solver_config,
                         correction=self.correction)
        current = committed_split(view)
        best = self._target_of(plan, current)
        press = pressure(view, self._tok_s)
        alarm = slo_alarm(press, self.recent.summary(now), self.slo)
        target = self._nudged(best, current, alarm)
        trigger = "" if target == best else \
            f"decode side short at {self._short[1]} plans in a row ({alarm.detail}): nudge"
        verdict = None
        if self.hybrid is not None:
            # The mode is chosen at the forecast's mean rate, the split's ratio at its upper
            # one: a burst of a few seconds must not flip the operating mode.
            mean = stats.with_rate(max(min(fc.rate, stats.rate), MIN_RATE), stats.rate_upper)
            served = solve(mean, self.inst, self.slo, self.budget, config=self.solver_config,
                           correction=self.correction).attainment
            target, verdict = self.hybrid.step(now, view, mean, observed, target, served,
                                               self.attained.summary(now))
        self._target = target
        decision = self.manager.step(now, view, target, alarm, self._can_remove(stats))
        running = active_split(view)
        if running.mixed == 0 and running.prefill >= 1 and running.decode >= 1:
            self._last_plan = (stats, running)
        self._basis = (fc, stats, plan)
        if verdict is not None:
            trigger = "; ".join(x for x in (trigger, verdict.reason) if x)
        extra = self._explained(
            decision.current, target, trigger,
            plan.predicted(target.prefill, target.decode, target.mixed)
            if verdict is None or not verdict.mixed
            else {"tpot_p90": verdict.at_rate.tpot_q, "rate": plan.rate})
        if not decision.actions and target != decision.current:
            extra["why"] = f"{extra['why']}; not yet: {decision.reason}"
        self.log.add(
            now, reason=f"{decision.reason} | {plan.reason}"
            + (f" | {verdict.reason}" if verdict else ""), actions=decision.actions,
            target=target, current=decision.current,
            observation={"window": snap, "arrival_scv": stats.arrival_scv, "pressure": press,
                         "alarm": alarm.detail, "correction": (self.correction.ttft,
                                                               self.correction.tpot)},
            **extra)
        return decision.actions

    def _can_remove(self, stats: WorkloadStats) -> Callable[[Role], bool]:
        """Scale-in check: the target split (the survivors) meets the attainment target at the
        forecast's upper rate, so they absorb the load of the instance removed."""
        def check(role: Role) -> bool:
            target = self._target
            if target is None or target.prefill < 1 or target.decode < 1:
                return False
            peak = stats.with_rate(stats.peak_rate)
            got = predict(peak, self.inst, self.slo, target.prefill, target.decode,
                          self.solver_config, self.correction)
            return got.attainment >= self.slo.attainment
        return check


def _factory(args: str, context: PolicyContext) -> ClusterPolicy:
    return DopdPolicy(DopdOptions.parse(args), context)


POLICIES.register("dopd", _factory)
