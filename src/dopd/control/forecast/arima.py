"""``arima(p, d, q)``: ARIMA parameters fitted by statsmodels, forecasts by a cheap recursion.

statsmodels estimates the parameters (innovations MLE, iteration-capped) on a bounded history
every few windows. Between fits, each window costs one ARMA recursion step of O(p + q) on the
differenced series: statsmodels' own per-observation path (results.extend + forecast) rebuilds a
state-space model each time, which costs milliseconds and collapses when BLAS threads compete
for shared cores. The recursion conditions on the history (innovations before its start are 0),
which matches the exact Kalman forecast after a short burn-in for an invertible MA part (the
tests check this against statsmodels). With too little data, or before any fit succeeded, it
forecasts with an EWMA and says so in the forecast note; a failed refit keeps the last fit.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass
from math import comb

import numpy as np

from dopd.control.forecast.base import FORECASTERS, Forecaster
from dopd.control.forecast.forecasters import EwmaForecaster
from dopd.errors import require

# What a numerical failure inside the statsmodels estimator raises (ZeroDivisionError from its
# Cython code, LinAlgError, ValueError from its parameter checks...).
_FIT_ERRORS = (ArithmeticError, ValueError, np.linalg.LinAlgError, IndexError, RuntimeError)


@dataclass(frozen=True, slots=True)
class ArimaFit:
    """Fitted parameters on the standardised series z = (y - loc) / scale.

    The d-times differenced z follows an ARMA(p, q) with mean ``mu``:
    w_t - mu = sum_i ar[i] (w_{t-1-i} - mu) + e_t + sum_j ma[j] e_{t-1-j}.
    """

    ar: tuple[float, ...]
    ma: tuple[float, ...]
    mu: float
    loc: float
    scale: float


class ArimaForecaster(Forecaster):
    """ARIMA(p, d, q) one-step forecaster.

    Fits on the last ``history`` windows, standardised by their mean and standard deviation
    (so rates and squared token counts fit alike), every ``refit_every`` windows, with at most
    ``maxiter`` optimiser iterations: the cost per fit is bounded without a timeout. Needs
    ``min_obs`` windows (default max(10, 3*(p+q) + d + 2)) before the first fit.
    """

    name = "arima"

    def __init__(
        self,
        p: int = 1,
        d: int = 1,
        q: int = 1,
        *,
        refit_every: int = 10,
        history: int = 120,
        maxiter: int = 20,
        min_obs: int | None = None,
        fallback_alpha: float = 0.3,
        quantile: float = 0.9,
        residual_window: int = 100,
    ) -> None:
        super().__init__(quantile, residual_window)
        for what, v, lo in (("p", p, 0), ("d", d, 0), ("q", q, 0),
                            ("refit_every", refit_every, 1), ("maxiter", maxiter, 1)):
            require(isinstance(v, int) and v >= lo, f"ARIMA {what} must be an integer >= {lo}")
        require(p + q >= 1 or d >= 1, "ARIMA(0,0,0) is not a forecaster; use ewma or constant")
        require(d <= 2, f"ARIMA d must be <= 2, got {d}")
        self.order = (p, d, q)
        self.refit_every = refit_every
        self.maxiter = maxiter
        self.min_obs = max(10, 3 * (p + q) + d + 2) if min_obs is None else int(min_obs)
        require(self.min_obs >= p + q + d + 2, f"ARIMA min_obs must be >= {p + q + d + 2}")
        require(isinstance(history, int) and history >= self.min_obs,
                f"ARIMA history must be an integer >= min_obs ({self.min_obs}), got {history!r}")
        # Coefficients of z_{t-k}, k = 1..d, in w_t = z_t + sum_k diff[k-1] * z_{t-k}.
        self._diff = tuple((-1) ** k * comb(d, k) for k in range(1, d + 1))
        self._history: deque[float] = deque(maxlen=history)
        self._fallback = EwmaForecaster(fallback_alpha)
        self.fit: ArimaFit | None = None
        self._z: deque[float] = deque(maxlen=max(d, 1))
        self._w: deque[float] = deque(maxlen=max(p, 1))
        self._e: deque[float] = deque(maxlen=max(q, 1))
        self._since_fit = 0
        self._status = ""
        self.n_fits = 0
        self.n_failed_fits = 0

    def _estimate(self) -> ArimaFit | None:
        # The estimator directly, not ARIMA.fit: that also builds a state-space results object,
        # which costs more than the estimation itself and is not needed for the recursion.
        from statsmodels.tsa.arima.estimators.innovations import innovations_mle

        p, d, q = self.order
        y = np.asarray(self._history, dtype=np.float64)
        loc = float(y.mean())
        scale = float(y.std())
        scale = scale if scale > 1e-12 * max(1.0, abs(loc)) else 1.0
        w = np.diff((y - loc) / scale, n=d)
        if float(np.ptp(w)) <= 1e-12:
            # A constant (differenced) history: the estimator would divide by zero, and the
            # forecast is exact without ARMA terms (the mean for d = 0, the last value else).
            return ArimaFit((0.0,) * p, (0.0,) * q, float(w.mean()) if d == 0 else 0.0, loc, scale)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params, _ = innovations_mle(
                    w, order=(p, 0, q), demean=d == 0,
                    minimize_kwargs={"options": {"maxiter": self.maxiter}},
                )
        except _FIT_ERRORS as exc:
            self._status = f"fit failed ({type(exc).__name__})"
            return None
        # With demean the estimator fits the demeaned series: its mean is the sample mean.
        mu = float(w.mean()) if d == 0 else 0.0
        fit = ArimaFit(tuple(map(float, params.ar_params)), tuple(map(float, params.ma_params)),
                       mu, loc, scale)
        if not all(math.isfinite(v) for v in (*fit.ar, *fit.ma, fit.mu)):
            self._status = "fit failed (non-finite parameters)"
            return None
        return fit

    def _reset_state(self) -> None:
        self._z.clear()
        self._w.clear()
        self._e.clear()

    def _next_w(self) -> float:
        """Forecast of the next differenced value from the state (missing terms count as 0)."""
        assert self.fit is not None
        mu = self.fit.mu
        pred = mu
        for coef, w in zip(self.fit.ar, reversed(self._w), strict=False):
            pred += coef * (w - mu)
        for coef, e in zip(self.fit.ma, reversed(self._e), strict=False):
            pred += coef * e
        return pred

    def _step(self, y: float) -> None:
        assert self.fit is not None
        z = (y - self.fit.loc) / self.fit.scale
        d = self.order[1]
        if len(self._z) >= d:
            w = z + sum(c * zk for c, zk in zip(self._diff, reversed(self._z), strict=False))
            self._e.append(w - self._next_w())
            self._w.append(w)
        self._z.append(z)

    def _observe(self, value: float) -> None:
        self._history.append(value)
        self._fallback.update(value)
        self._since_fit += 1
        if len(self._history) < self.min_obs:
            return
        due = self.n_fits == 0 or self._since_fit >= self.refit_every
        if due:
            self._since_fit = 0  # a failed fit also waits a full cadence before the next try
            self.n_fits += 1
            fit = self._estimate()
            if fit is not None:
                self.fit, self._status = fit, ""
                self._reset_state()
                for y in self._history:  # condition the recursion on the whole history
                    self._step(y)
                return
            self.n_failed_fits += 1
            if self.fit is not None:
                self._status += "; using the last fit"
        if self.fit is not None:
            self._step(value)

    def _point(self) -> float:
        if self.fit is None:
            return self._fallback.predict().mean
        z_next = self._next_w() - sum(
            c * zk for c, zk in zip(self._diff, reversed(self._z), strict=False)
        )
        return self.fit.loc + self.fit.scale * z_next

    def _note(self) -> str:
        if self.fit is not None:
            return f"arima: {self._status}" if self._status else ""
        n = len(self._history)
        if n < self.min_obs:
            return f"arima: too little data ({n} < {self.min_obs} windows), ewma fallback"
        return f"arima: {self._status or 'no fit'}, ewma fallback"


FORECASTERS.register("arima", ArimaForecaster)
