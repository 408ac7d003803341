"""The control plane's learned latency belief in ``dopd serve``.

:func:`build_live_belief` makes the belief of a deployment: the latency model of ``perf_model`` on
``gpu`` (in GPU seconds), times ``1 + model_bias``, as a
:class:`~dopd.control.calibration.CalibratedLatency` that learns unless ``calibration`` is off.
The same object is the cluster policy's latency model (its solver) and, scaled to the emulated
wall clock by :class:`~dopd.serve.live_routing.ScaledLatency`, the router's (placement and
admission), so all of them predict through what it has learned.

:class:`LiveCalibration` feeds it: the front end hands it every batch of
:class:`~dopd.serve.step_samples.StepSample` a worker reports, and it passes each step to
:meth:`~dopd.control.calibration.CalibratedLatency.observe_step` in GPU seconds (the wall time
divided by ``step_time_scale`` in emulated mode), the same code that the simulator feeds. In
emulated mode with ``step_time_scale`` 0 steps take no modeled time, so nothing is learned
(the errors are still measured). In real mode the server first rebases the belief on a fit
of the machine's own step times (:meth:`LiveCalibration.use_fit`, see
:mod:`dopd.serve.self_calibration`). As a dispatcher observer it also keeps each request's
TTFT as the router predicted it against the observed (:class:`TTFTPrediction`).
:meth:`LiveCalibration.view` is the ``calibration`` field of ``/v1/cluster``: the factors per
step kind, pooled and per instance, the recent prediction error, the self-calibration and the
TTFT error.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dopd.control.calibration import KINDS, CalibratedLatency, CalibrationConfig
from dopd.control.cluster_config import ClusterConfig
from dopd.control.cluster_models import build_models
from dopd.perf.base import LatencyModel
from dopd.serve.in_flight import Observer
from dopd.serve.self_calibration import CalibrationFit, SelfCalibration
from dopd.serve.serve_config import ServeConfig
from dopd.serve.step_samples import StepSample
from dopd.types import RequestOutcome

ERROR_ALPHA = 0.05
"""EWMA weight of one step in the recent prediction error."""

RECORDS_KEPT = 12
"""Decision-log records of the calibrator kept (and shown) by a live deployment."""

TTFT_KEPT = 1024
"""Requests whose predicted and observed TTFT are kept (the ``ttft`` summary's window)."""


def base_latency(config: ServeConfig, cluster: ClusterConfig | None = None) -> LatencyModel:
    """The configured latency model of ``config`` (GPU seconds), as ``dopd simulate`` builds
    it for the deployment's instances ``cluster`` (None: ``config.cluster_config()``)."""
    return build_models(config.cluster_config() if cluster is None else cluster).latency


def build_live_belief(config: ServeConfig,
                      cluster: ClusterConfig | None = None) -> CalibratedLatency:
    """The belief of ``config`` (see the module docstring)."""
    learn = CalibrationConfig() if config.calibration else None
    return CalibratedLatency(base_latency(config, cluster), 1.0 + config.model_bias, learn)


@dataclass(frozen=True, slots=True)
class KindCalibration:
    """What the belief has learned about one kind of step (``prefill`` or ``decode``).

    ``factor``: the pooled correction the control plane predicts with (``prior`` included);
    ``learned``: ``factor / prior`` (1 while nothing is learned); ``instances``: the
    per-instance factors, by instance id; ``observations``: steps seen; ``mean_rel_err`` and
    ``mean_abs_rel_err``: EWMA over recent steps of ``predicted / observed - 1`` of the belief at
    the time of each step (None before the first)."""

    factor: float
    learned: float
    instances: dict[str, float]
    observations: int
    mean_rel_err: float | None
    mean_abs_rel_err: float | None


@dataclass(frozen=True, slots=True)
class CalibrationView:
    """The ``calibration`` field of ``/v1/cluster``.

    ``enabled``: calibration is on; ``learning``: it is on and steps take modeled time;
    ``model``: the configured latency model; ``prior``: ``1 + model_bias``; ``version``: the
    belief's version (grows as factors move); ``dropped``: samples the workers' bounded buffers
    lost; ``kinds``: per kind of step; ``records``: the calibrator's latest decision-log
    records (predicted versus observed step times per interval); ``self_calibration``: the
    fit of this machine's step times the belief started from
    (:meth:`dopd.serve.self_calibration.SelfCalibration.view`); ``ttft``: the router's
    predicted against the observed TTFT of the last :data:`TTFT_KEPT` requests
    (:func:`ttft_summary`; ``requests``: all so far)."""

    enabled: bool
    learning: bool
    model: str
    prior: float
    version: int
    dropped: int
    kinds: dict[str, KindCalibration]
    records: list[dict[str, Any]]
    self_calibration: dict[str, Any]
    ttft: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TTFTPrediction:
    """One request's TTFT as the router predicted it at placement and as it was observed
    (front-end clock: arrival to the first token's event), in seconds."""

    request_id: int
    prompt_tokens: int
    predicted_s: float
    observed_s: float

    @property
    def rel_error(self) -> float:
        """``predicted / observed - 1``."""
        return self.predicted_s / self.observed_s - 1.0


def ttft_summary(pairs: Sequence[TTFTPrediction]) -> dict[str, Any]:
    """``n``, ``median_abs_rel_err``, ``p90_abs_rel_err`` and ``mean_rel_err`` (signed: > 0
    means the router predicted too long) of ``pairs`` (None values when there are none)."""
    errors = sorted(abs(p.rel_error) for p in pairs)
    if not errors:
        return {"n": 0, "median_abs_rel_err": None, "p90_abs_rel_err": None,
                "mean_rel_err": None}
    return {"n": len(errors), "median_abs_rel_err": _quantile(errors, 0.5),
            "p90_abs_rel_err": _quantile(errors, 0.9),
            "mean_rel_err": sum(p.rel_error for p in pairs) / len(pairs)}


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of an ascending sequence."""
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class LiveCalibration(Observer):
    """Feeds a deployment's belief from its workers' step samples (see the module docstring).

    ``scale``: wall seconds per modeled GPU second of a step (``step_time_scale`` in emulated
    mode, 1 in real mode)."""

    def __init__(self, belief: CalibratedLatency, scale: float, enabled: bool,
                 self_calibration: SelfCalibration | None = None) -> None:
        self.belief = belief
        self.scale = scale
        self.enabled = enabled
        self.learning = enabled and scale > 0
        self.dropped = 0
        self.observations = dict.fromkeys(KINDS, 0)
        self._err: dict[str, tuple[float, float] | None] = dict.fromkeys(KINDS)
        self._t0 = time.monotonic()
        self.self_calibration = self_calibration or SelfCalibration()
        self.ttft: deque[TTFTPrediction] = deque(maxlen=TTFT_KEPT)
        self.ttft_count = 0

    @classmethod
    def of(cls, config: ServeConfig, belief: CalibratedLatency) -> LiveCalibration:
        scale = config.step_time_scale if config.mode == "emulated" else 1.0
        state = SelfCalibration("pending" if config.measures_calibration else "off")
        return cls(belief, scale, config.calibration, state)

    def use_fit(self, fit: CalibrationFit, status: str, name: str) -> None:
        """Predict from ``fit`` from now on (``status``: ``fitted`` or ``loaded``): the belief
        is rebased on it (:meth:`~dopd.control.calibration.CalibratedLatency.rebase`) and the
        recent errors, which were the old base's, restart."""
        self.belief.rebase(fit.latency_model(self.belief.kv_capacity_tokens, name))
        self._err = dict.fromkeys(KINDS)
        self.self_calibration.fit = fit
        self.self_calibration.status = status

    def on_done(self, t: Any, outcome: RequestOutcome) -> None:
        """A request ended: its predicted and observed TTFT, when it has both, are kept
        (the last :data:`TTFT_KEPT`) and logged by the belief."""
        predicted, observed = outcome.predicted_ttft_s, outcome.ttft_s
        if predicted is None or observed is None or not observed > 0:
            return
        self.ttft_count += 1
        self.ttft.append(TTFTPrediction(outcome.request_id, outcome.prompt_tokens, predicted,
                                        observed))
        self.belief.observe_ttft(time.monotonic() - self._t0, predicted, observed)

    def observe(self, instance_id: int, samples: Sequence[StepSample], dropped: int = 0) -> None:
        """The steps ``instance_id`` reported, in the order it ran them."""
        self.dropped += dropped
        belief = self.belief
        now = time.monotonic() - self._t0
        for s in samples:
            kind = s.kind
            self.observations[kind] += 1
            predicted = self._predict(s)
            if s.seconds > 0 and predicted > 0:
                err = predicted / s.seconds - 1.0
                old = self._err[kind]
                self._err[kind] = (err, abs(err)) if old is None else (
                    old[0] + ERROR_ALPHA * (err - old[0]),
                    old[1] + ERROR_ALPHA * (abs(err) - old[1]))
            if self.learning:
                belief.observe_step(now, instance_id, s.prefill_new_tokens, s.prefill_attn_sum,
                                    s.prefill_count, s.decode_count, s.decode_ctx_sum, 1,
                                    s.seconds / self.scale)
        if len(belief.records) > RECORDS_KEPT:
            del belief.records[:-RECORDS_KEPT]

    def _predict(self, s: StepSample) -> float:
        """The belief's wall-clock time of ``s`` (as the router predicts it)."""
        b = self.belief
        if s.prefill_count:
            t = b.step_time(s.prefill_new_tokens, s.prefill_attn_sum, s.prefill_count,
                            s.decode_count, s.decode_ctx_sum)
        else:
            t = b.factor("decode") * b.base.decode_run_time(s.decode_count, s.decode_ctx_sum, 1)
        return t * self.scale

    def view(self) -> CalibrationView:
        b = self.belief
        kinds = {}
        for kind in KINDS:
            err = self._err[kind]
            factor = b.factor(kind)
            kinds[kind] = KindCalibration(
                factor=factor, learned=factor / b.prior,
                instances={str(iid): b.prior * math.exp(log)
                           for (k, iid), log in sorted(b.instance_log.items()) if k == kind},
                observations=self.observations[kind],
                mean_rel_err=None if err is None else err[0],
                mean_abs_rel_err=None if err is None else err[1])
        ttft = ttft_summary(self.ttft)
        ttft["requests"] = self.ttft_count
        return CalibrationView(enabled=self.enabled, learning=self.learning, model=b.base.name,
                               prior=b.prior, version=b.version, dropped=self.dropped,
                               kinds=kinds, records=list(b.records[-RECORDS_KEPT:]),
                               self_calibration=self.self_calibration.view(), ttft=ttft)

    def snapshot(self) -> dict[str, Any]:
        """:meth:`view` as plain JSON data."""
        return dataclasses.asdict(self.view())
