"""The control plane's belief about step times, corrected online from observed steps.

The router, admission control and the P/D solver predict step times with a latency model that is
never exactly the hardware's (a preset is 16-33 % off a measured GPU, and real steps jitter).
:class:`CalibratedLatency` is that belief: a configured :class:`~dopd.perf.base.LatencyModel`
(times a fixed ``prior`` factor) with a learned correction factor per kind of step, and it is
itself a ``LatencyModel``, so everything that predicts through it follows the correction.

Learning (clock-agnostic: times are whatever clock the caller passes). A worker reports each
finished step (or run of decode-only steps) with its batch sums and its observed duration
(:meth:`CalibratedLatency.observe_step`). The error ``log(observed / predicted)`` against the
configured model updates an EWMA of the log correction, per kind (``prefill``: a step with a
prefill chunk; ``decode``: a decode-only step) pooled over instances, and per kind and instance.
The innovation is clipped (``CalibrationConfig.clip``), so one outlier moves the estimate by at
most ``alpha * clip``; a run of ``k`` steps counts as ``k`` observations. Memory is O(kinds x
instances), bounded by ``max_instances``. Predictions use the pooled factor (the interface has
no instance argument); :meth:`CalibratedLatency.factor` gives the per-instance one. An EWMA of
log errors estimates the median step time: under mean-preserving lognormal noise of log-sd
``s`` that is ``exp(-s^2/2)`` of the mean (0.5 % low at ``s = 0.1``, 2 % at ``s = 0.2``).

:attr:`CalibratedLatency.version` grows when a pooled factor has moved by more than
``CalibrationConfig.bump`` since the last version, so users that tabulate the model (the P/D
solver's instance model) know when to rebuild. ``records`` is the decision-log view: every
``log_interval_s`` per kind, the predicted versus observed step time (mean signed and absolute
relative error, step count, factor), and the router's predicted versus observed TTFT
(:meth:`CalibratedLatency.observe_ttft`). With ``config=None`` (``--no-calibration``) the
factors stay at 1 but the errors are still recorded.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from dopd.errors import require
from dopd.perf.base import BatchShape, LatencyModel, StepBreakdown

KINDS = ("prefill", "decode")


@dataclass(frozen=True, slots=True)
class CalibrationConfig:
    """Online calibration settings (defaults chosen on seed 1 of ``bench_sensitivity.py``).

    ``alpha``: EWMA weight of one observed step; ``clip``: largest ``|log(observed /
    predicted)|`` innovation taken from one observation; ``bump``: relative factor change that
    bumps :attr:`CalibratedLatency.version`; ``max_instances``: per-instance entries kept per
    kind (the oldest is dropped); ``log_interval_s``: seconds between decision-log records.
    """

    alpha: float = 0.02
    clip: float = 0.5
    bump: float = 0.02
    max_instances: int = 1024
    log_interval_s: float = 10.0

    def __post_init__(self) -> None:
        require(0 < self.alpha < 1, f"calibration alpha must be in (0, 1), got {self.alpha}")
        require(self.clip > 0, f"calibration clip must be > 0, got {self.clip}")
        require(self.bump > 0, f"calibration bump must be > 0, got {self.bump}")
        require(self.max_instances >= 1, "calibration max_instances must be >= 1")
        require(self.log_interval_s > 0, "calibration log interval must be > 0 s")


class _Window:
    """Sums of relative errors over one log interval."""

    __slots__ = ("abs_err", "err", "n", "steps")

    def __init__(self) -> None:
        self.n = 0
        self.steps = 0
        self.err = 0.0
        self.abs_err = 0.0

    def add(self, rel_err: float, steps: int) -> None:
        self.n += 1
        self.steps += steps
        self.err += rel_err
        self.abs_err += abs(rel_err)


class CalibratedLatency(LatencyModel):
    """``prior x base`` corrected by learned per-kind factors (see the module docstring).

    ``config=None`` turns learning off (errors are still logged)."""

    __slots__ = ("_coeffs", "_log", "_next_log", "_version_log", "_windows", "base", "config",
                 "instance_log", "kv_capacity_tokens", "name", "prior", "records", "version")

    def __init__(self, base: LatencyModel, prior: float = 1.0,
                 config: CalibrationConfig | None = None) -> None:
        require(prior > 0 and math.isfinite(prior), f"prior factor must be > 0, got {prior}")
        self.base = base
        self.prior = float(prior)
        self.config = config
        self.name = base.name if prior == 1.0 else f"{base.name} x{prior:g}"
        self.kv_capacity_tokens = base.kv_capacity_tokens
        self._log = {kind: 0.0 for kind in KINDS}
        self._version_log = dict(self._log)
        self.instance_log: dict[tuple[str, int], float] = {}
        self._coeffs: dict[int, tuple[float, float]] = {}
        self._windows = {kind: _Window() for kind in (*KINDS, "ttft")}
        self._next_log = config.log_interval_s if config is not None else 10.0
        self.records: list[dict[str, object]] = []
        self.version = 0

    # ------------------------------------------------------------------ predictions
    def factor(self, kind: str, instance_id: int | None = None) -> float:
        """The correction of ``kind`` steps (prior included): pooled, or of ``instance_id``
        (the pooled one until that instance has reported)."""
        log = self._log[kind]
        if instance_id is not None:
            log = self.instance_log.get((kind, instance_id), log)
        return self.prior * math.exp(log)

    def step_time(self, prefill_new_tokens: int, prefill_attn_sum: int, prefill_count: int,
                  decode_count: int, decode_ctx_sum: int) -> float:
        kind = "prefill" if prefill_count else "decode"
        return self.factor(kind) * self.base.step_time(
            prefill_new_tokens, prefill_attn_sum, prefill_count, decode_count, decode_ctx_sum)

    def decode_coefficients(self, decode_count: int) -> tuple[float, float]:
        c = self._coeffs.get(decode_count)
        if c is None:
            if len(self._coeffs) > 4096:
                self._coeffs.clear()
            c = self._coeffs[decode_count] = self.base.decode_coefficients(decode_count)
        f = self.factor("decode")
        return f * c[0], f * c[1]

    def breakdown(self, batch: BatchShape) -> StepBreakdown:
        parts = self.base.breakdown(batch)
        f = self.factor("prefill" if batch.prefill else "decode")
        return dataclasses.replace(parts, step_ms=parts.step_ms * f)

    def rebase(self, base: LatencyModel) -> None:
        """Predict from ``base`` from now on (a fit of the machine's own step times replacing
        the configured model): the learned factors restart at 1 (they corrected the old base),
        the prior stays, and :attr:`version` grows so tabulated copies are rebuilt."""
        self.base = base
        self.name = base.name if self.prior == 1.0 else f"{base.name} x{self.prior:g}"
        self._coeffs.clear()
        self._log = {kind: 0.0 for kind in KINDS}
        self._version_log = dict(self._log)
        self.instance_log.clear()
        self.version += 1

    # ------------------------------------------------------------------ learning
    def observe_step(self, now: float, instance_id: int, prefill_new_tokens: int,
                     prefill_attn_sum: int, prefill_count: int, decode_count: int,
                     decode_ctx_sum: int, steps: int, observed_s: float) -> None:
        """A worker finished ``steps`` steps in ``observed_s`` seconds at ``now``: one step
        over the given sums, or (``steps > 1``, decode only) a run of decode steps whose first
        step has those sums. Non-positive times or step counts are ignored."""
        if steps < 1 or not observed_s > 0:
            return
        if prefill_count:
            kind = "prefill"
            base = self.base.step_time(prefill_new_tokens, prefill_attn_sum, prefill_count,
                                       decode_count, decode_ctx_sum)
        else:
            kind = "decode"
            base = self.base.decode_run_time(decode_count, decode_ctx_sum, steps)
        if not base > 0:
            return
        observed = math.log(observed_s / (self.prior * base))
        predicted = self._log[kind]
        self._windows[kind].add(math.expm1(predicted - observed), steps)
        if now >= self._next_log:
            self._flush(now)
        config = self.config
        if config is None:
            return
        clip = config.clip
        weight = 1.0 - (1.0 - config.alpha) ** steps
        self._log[kind] = predicted + weight * max(-clip, min(clip, observed - predicted))
        key = (kind, instance_id)
        own = self.instance_log.pop(key, predicted)
        self.instance_log[key] = own + weight * max(-clip, min(clip, observed - own))
        if len(self.instance_log) > config.max_instances * len(KINDS):
            del self.instance_log[next(iter(self.instance_log))]
        if abs(self._log[kind] - self._version_log[kind]) > math.log1p(config.bump):
            self._version_log = dict(self._log)
            self.version += 1

    def observe_ttft(self, now: float, predicted_s: float, observed_s: float) -> None:
        """The router predicted ``predicted_s`` for a request's TTFT; it took ``observed_s``.
        Logged only (TTFT also depends on the load the router could not know)."""
        if predicted_s > 0 and observed_s > 0 and math.isfinite(predicted_s):
            self._windows["ttft"].add(predicted_s / observed_s - 1.0, 1)
        if now >= self._next_log:
            self._flush(now)

    def flush(self, now: float) -> None:
        """Write the records of the interval in progress (at the end of a run)."""
        self._flush(now)

    def _flush(self, now: float) -> None:
        for kind, window in self._windows.items():
            if window.n == 0:
                continue
            record: dict[str, object] = {
                "t": now, "action": "prediction-error", "what": kind if kind == "ttft"
                else f"{kind}-step", "n": window.n, "steps": window.steps,
                "mean_rel_err": window.err / window.n,
                "mean_abs_rel_err": window.abs_err / window.n}
            if kind != "ttft":
                record["factor"] = self.factor(kind)
            self.records.append(record)
            self._windows[kind] = _Window()
        interval = self.config.log_interval_s if self.config is not None else 10.0
        while self._next_log <= now:
            self._next_log += interval
