"""``dopd:hybrid``: run every instance MIXED while colocation is predicted to hold the TPOT SLO.

At moderate load a TPOT SLO of 100-200 ms leaves room to batch prefill chunks into decode steps,
and N MIXED instances (with the length-aware router) pool both phases over the whole cluster,
which beats any P/D split. Past that, colocated decode steps blow the TPOT SLO and
disaggregation wins. :class:`HybridMode` is the two-state switch the ``dopd`` policy consults at
every plan:

- MIXED -> SPLIT when the requests that ended over the last ``attained`` window (all-MIXED
  running) missed the attainment target at ``exit_confirm`` plans in a row while the solver's
  split is predicted to meet it (the colocated predictor does not model every interference;
  the cooldown before re-entering then doubles, up to :data:`MAX_COOLDOWN_S`); or when the
  colocated predictor (:func:`~dopd.control.ratio.colocated.
  predict_colocated`, corrected online) puts TPOT P90 at the forecast rate above ``exit`` x
  the SLO at ``exit_confirm`` plans in a row (a burst of a few seconds only grows the batch
  for a while; a mode change costs more), or the requests that just finished show TPOT P90
  above the SLO; either only while the solver's best P/D split is predicted to serve at least
  the colocated attainment at the forecast rate (minus ``gain``): a peak that the model says
  overloads every split but not all-MIXED is not worth a mode change (a mode change under load
  costs a drain); when every mode is overloaded the split is taken, as it degrades better;
- SPLIT -> MIXED only when the prediction at the rate stays below ``enter`` x the SLO
  (``enter`` < ``exit``: the hysteresis band) and colocation's attainment on both SLOs is
  predicted no worse than the split's (minus ``gain``) for ``hold`` consecutive plans, and at
  least ``cooldown_s`` after the last exit, so the mode does not flap.

Colocation's attainment is P(TPOT ok) from the colocated predictor times P(TTFT ok) of the
prefill side pooled over all N instances (:func:`~dopd.control.ratio.colocated.
colocated_ttft_attainment`): with long prompts and short outputs (summarization) N pooled
instances beat any split's N - 1 prefill instances, so the mode stays all-MIXED even at
loads that overload it (prompts beyond N instances overload every split too).

With capped prompt chunks (``mixtok=``), the colocated predictor also bounds TPOT by the
longest step the caps allow (``mixed_step``, :func:`~dopd.control.policies.mixed_budget.
mixed_step_bound`): long prompts then no longer read as decode stalls that a split would avoid.

The correction factor is the EWMA (in log space) of observed over raw predicted TPOT P90, folded
in only while the cluster ran all-MIXED with no instance in transition and enough requests
finished, against the prediction made at the previous plan (what was running then).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dopd.control.manager import Split, active_split, in_transition
from dopd.control.policies.base import ClusterView
from dopd.control.policies.signals import Observed
from dopd.control.ratio import CorrectionFactors, InstanceModel, WorkloadStats
from dopd.control.ratio.colocated import (
    ColocatedPrediction,
    StepBound,
    colocated_ttft_attainment,
    predict_colocated,
)
from dopd.errors import require
from dopd.types import SLO

_MIN_SAMPLES = 20
MAX_COOLDOWN_S = 600.0
"""The cooldown before re-entering all-MIXED doubles after every exit on observed attainment
(the model was wrong there), up to this."""


@dataclass(frozen=True, slots=True)
class HybridConfig:
    """Thresholds of :class:`HybridMode` (fractions of the TPOT SLO, see the module doc);
    ``gain``: how far (attainment) the split may be predicted below colocation and still be
    taken; ``veto``: leave only for a split predicted strictly better than colocation (no tie
    rule), and on an exit for observed misses, better than the attainment observed; ``damp``:
    the cooldown doubles after every exit that follows its entry within twice the cooldown (a
    flap), up to :data:`MAX_COOLDOWN_S`, and returns to ``cooldown_s`` after a longer stay."""

    enter: float = 0.6
    exit: float = 0.85
    hold: int = 4
    exit_confirm: int = 1
    cooldown_s: float = 60.0
    calibrate: bool = True
    gain: float = 0.0
    veto: bool = False
    damp: bool = False

    def __post_init__(self) -> None:
        require(0 < self.enter <= self.exit, f"hybrid thresholds need 0 < enter <= exit, got "
                f"enter={self.enter} exit={self.exit}")
        require(self.hold >= 1 and self.exit_confirm >= 1,
                f"hybrid hold and exit confirmations must be >= 1, got {self.hold}, "
                f"{self.exit_confirm}")
        require(self.cooldown_s >= 0, f"hybrid cooldown must be >= 0 s, got {self.cooldown_s}")


@dataclass(frozen=True, slots=True)
class HybridVerdict:
    """One decision: whether to run all-MIXED, why, and the (corrected) predictions."""

    mixed: bool
    reason: str
    at_rate: ColocatedPrediction
    at_upper: ColocatedPrediction
    scale: float


class HybridMode:
    """The MIXED/SPLIT state machine of one ``dopd`` policy (see the module doc)."""

    def __init__(self, config: HybridConfig, inst: InstanceModel, slo: SLO, instances: int,
                 start_mixed: bool = True,
                 mixed_step: StepBound | None = None) -> None:
        self.config = config
        self.mixed_step = mixed_step
        self.inst = inst
        self.slo = slo
        self.instances = instances
        self.mixed = start_mixed
        self.correction = CorrectionFactors(hi=3.0)
        self._below = 0
        self._above = 0
        self._short = 0
        self._cooldown = config.cooldown_s
        self._left_at = -math.inf
        self._entered_at = -math.inf
        self._last: ColocatedPrediction | None = None

    @staticmethod
    def _short_exit(why: str) -> bool:
        """Whether an exit was on observed attainment (the model said all-MIXED holds)."""
        return why.startswith("observed attainment")

    def next_cooldown(self, now: float, observed_exit: bool) -> float:
        """The cooldown before re-entering all-MIXED after an exit at ``now``: doubled after
        an exit on observed attainment, and with ``damp`` after a flap (an exit within twice
        the cooldown of the last entry); with ``damp``, back to ``cooldown_s`` after a longer
        stay."""
        cfg = self.config
        flap = cfg.damp and now - self._entered_at < 2.0 * self._cooldown
        if observed_exit or flap:
            return min(2.0 * self._cooldown, MAX_COOLDOWN_S)
        return cfg.cooldown_s if cfg.damp else self._cooldown

    def calibrate(self, observed: Observed, ran_mixed: bool) -> None:
        """Fold the last interval's observed TPOT P90 into the correction, when all instances
        ran MIXED through it (``ran_mixed``) against the raw prediction of the last plan."""
        last = self._last
        if not self.config.calibrate or not ran_mixed or last is None or not last.stable \
                or observed.finished < _MIN_SAMPLES or observed.tpot_p90 is None:
            return
        self.correction = self.correction.update(observed_tpot=observed.tpot_p90,
                                                 predicted_tpot=last.tpot_q)

    def decide(self, now: float, stats: WorkloadStats, observed: Observed,
               split_attainment: float | None = None,
               attained: Observed | None = None) -> HybridVerdict:
        """Whether the next target is all-MIXED (``stats``: the plan's load; ``observed``:
        requests that finished recently; ``split_attainment``: the solver's predicted
        attainment of its best P/D split, None when unknown; ``attained``: the requests that
        ended over a longer window, whose attainment is the ground truth of the mode running).
        """
        cfg, slo = self.config, self.slo.tpot_s
        scale = self.correction.tpot
        step = self.mixed_step
        raw = predict_colocated(self.inst, stats, self.instances, slo, q=self.slo.attainment,
                                mixed_step=step)
        self._last = raw
        at_rate = predict_colocated(self.inst, stats, self.instances, slo,
                                    q=self.slo.attainment, scale=scale,
                                    mixed_step=step) if scale != 1.0 else raw
        upper = predict_colocated(self.inst, stats, self.instances, slo, q=self.slo.attainment,
                                  scale=scale, rate=max(stats.peak_rate, stats.rate),
                                  mixed_step=step)
        mean_p90 = raw.tpot_q * scale
        # Colocation's attainment on both SLOs: the prompts pool over every instance.
        both = at_rate.attainment * colocated_ttft_attainment(self.inst, stats, self.slo,
                                                               at_rate)
        seen = observed.tpot_p90 if observed.finished >= _MIN_SAMPLES else None
        if self.mixed:
            why = ""
            self._above = self._above + 1 if mean_p90 > cfg.exit * slo else 0
            # A split predicted worse than colocation (a peak that overloads every split) is
            # not worth a mode change, whatever the colocated TPOT.
            # On a tie (every mode overloaded) the split degrades better only when decode is
            # what overloads colocation: prompts alone beyond N - 1 instances overload any split.
            n = self.instances
            split_wins = split_attainment is None \
                or split_attainment + cfg.gain > both \
                or (split_attainment + cfg.gain >= both and not cfg.veto
                    and at_rate.prefill_share * n < n - 1)
            # The colocated predictor misses interference it does not model (a burst of long
            # prompts in budget-sized chunks stalls every decode of an instance): all-MIXED
            # observed below the target, for a split predicted to meet it, is a reason too.
            got = attained.attainment if attained is not None \
                and attained.finished >= _MIN_SAMPLES else None
            short = got is not None and got < self.slo.attainment and (
                split_attainment is None or split_attainment >= self.slo.attainment)
            self._short = self._short + 1 if short else 0
            # With the veto, an exit on what was observed also needs the split predicted
            # better than what all-MIXED attained.
            beats_seen = not cfg.veto or split_attainment is None or got is None \
                or split_attainment > got
            if split_wins and self._above >= cfg.exit_confirm:
                why = f"colocated TPOT p90 {mean_p90 * 1e3:.0f}ms at rate, {self._above} plans " \
                      f"> {cfg.exit:g} x SLO"
            elif split_wins and beats_seen and seen is not None and seen > slo:
                why = f"observed TPOT p90 {seen * 1e3:.0f}ms > SLO"
            elif split_wins and beats_seen and self._short >= cfg.exit_confirm:
                why = f"observed attainment {got:.2f} < target at {self._short} plans, split " \
                      f"predicted to meet it"
            if why:
                self.mixed, self._below, self._short, self._left_at = False, 0, 0, now
                self._cooldown = self.next_cooldown(now, self._short_exit(why))
                reason = f"hybrid: leave all-mixed ({why})"
            else:
                reason = f"hybrid: all-mixed (TPOT p90 {upper.tpot_q * 1e3:.0f}ms at upper rate)"
        else:
            ok = at_rate.tpot_q <= cfg.enter * slo and (
                split_attainment is None or both >= split_attainment - cfg.gain)
            self._below = self._below + 1 if ok else 0
            if self._below >= cfg.hold and now - self._left_at >= self._cooldown:
                self.mixed, self._entered_at = True, now
                reason = f"hybrid: enter all-mixed (TPOT p90 {at_rate.tpot_q * 1e3:.0f}ms)"
            else:
                reason = f"hybrid: split (colocated TPOT p90 {at_rate.tpot_q * 1e3:.0f}ms, " \
                         f"{self._below}/{cfg.hold} below {cfg.enter:g} x SLO)"
        reason += f" [p90 {mean_p90 * 1e3:.0f}ms at rate, x{scale:.2f}, attainment " \
                  f"{both:.2f} colocated" + ("]" if split_attainment is None
                                                          else f" vs {split_attainment:.2f} split]")
        return HybridVerdict(self.mixed, reason, at_rate, upper, scale)

    def step(self, now: float, view: ClusterView, stats: WorkloadStats, observed: Observed,
             target: Split, split_attainment: float | None = None,
             attained: Observed | None = None) -> tuple[Split, HybridVerdict]:
        """One plan: calibrate on the interval that ended (when all of ``view`` ran MIXED),
        decide, and return the target (all-MIXED, or the solver's ``target``) and verdict."""
        running = active_split(view)
        self.calibrate(observed, running.mixed == running.total and in_transition(view) == 0)
        verdict = self.decide(now, stats, observed, split_attainment,
                              attained if running.mixed == running.total else None)
        return (Split(0, 0, self.instances) if verdict.mixed else target), verdict
