"""The forecaster interface, the residual-based upper bound, and the forecaster registry.

A forecaster sees one value per control window (``update``) and predicts the next window's
value (``predict``): a point forecast and an upper prediction bound that provisioning can use
to absorb bursts. Models register a factory under a name; :func:`make_forecaster` builds one
from a spec string such as ``"ewma(0.3)"`` or ``"arima(2,1,1)"``.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from dopd.errors import DopdError, require
from dopd.registry import Registry


@dataclass(frozen=True, slots=True)
class Forecast:
    """Prediction of the next window's value.

    ``upper`` (>= ``mean``) is the upper prediction bound at the forecaster's quantile. ``note``
    is empty in the normal case and says why otherwise (warm-up, fallback model, failed fit).
    """

    mean: float
    upper: float
    note: str = ""


class ResidualBand:
    """Upper-bound offset from the last ``window`` one-step-ahead residuals (actual - predicted).

    With at least ``min_empirical`` residuals the offset is their split-conformal quantile
    (the ceil((n+1)q)-th smallest; distribution-free, so it follows skewed bursts); with fewer
    it is z_q times their root mean square (a normal approximation); with none it is 0.
    The offset is never negative, so ``upper >= mean``.
    """

    def __init__(self, quantile: float = 0.9, window: int = 100, min_empirical: int = 20) -> None:
        require(0.5 <= quantile < 1.0, f"upper-bound quantile must be in [0.5, 1), got {quantile}")
        require(window >= 2, f"residual window must be >= 2, got {window}")
        require(min_empirical >= 1, f"min_empirical must be >= 1, got {min_empirical}")
        self.quantile = float(quantile)
        self._z = NormalDist().inv_cdf(quantile)
        self._residuals: deque[float] = deque(maxlen=window)
        self._min_empirical = min_empirical

    def __len__(self) -> int:
        return len(self._residuals)

    def add(self, residual: float) -> None:
        if math.isfinite(residual):
            self._residuals.append(residual)

    def offset(self) -> float:
        n = len(self._residuals)
        if n == 0:
            return 0.0
        r = np.fromiter(self._residuals, dtype=np.float64, count=n)
        if n >= self._min_empirical:
            k = min(n, math.ceil((n + 1) * self.quantile))
            value = float(np.partition(r, k - 1)[k - 1])
        else:
            value = self._z * float(np.sqrt(np.mean(r * r)))
        return max(value, 0.0)


class Forecaster(ABC):
    """One-step-ahead predictor of a scalar series observed once per window.

    Contract: ``update(value)`` takes the value of the window that just ended (finite, else
    DopdError); ``predict()`` forecasts the next window and raises DopdError before the first
    update (see :attr:`ready`). Both are O(1) amortised for the smoothing models; ARIMA refits
    on a bounded history every few windows. Subclasses implement ``_observe`` (fold in a value)
    and ``_point`` (the current point forecast); the base class tracks residuals for the bound.
    """

    name: str = "forecaster"

    def __init__(self, quantile: float = 0.9, residual_window: int = 100) -> None:
        self._band = ResidualBand(quantile, residual_window)
        self._n = 0
        self._mean = math.nan

    @property
    def quantile(self) -> float:
        return self._band.quantile

    @property
    def ready(self) -> bool:
        """True once at least one value has been seen."""
        return self._n > 0

    @property
    def n_observed(self) -> int:
        return self._n

    def update(self, value: float) -> None:
        """Fold in the value of the window that just ended."""
        v = float(value)
        require(math.isfinite(v), f"{self.name}: observed value must be finite, got {value!r}")
        if self._n > 0:
            self._band.add(v - self._mean)
        self._observe(v)
        self._n += 1
        self._mean = self._point()

    def predict(self) -> Forecast:
        """Point forecast and upper bound for the next window."""
        if self._n == 0:
            raise DopdError(f"{self.name}: no observations yet, cannot forecast")
        return Forecast(self._mean, self._mean + self._band.offset(), self._note())

    @abstractmethod
    def _observe(self, value: float) -> None: ...

    @abstractmethod
    def _point(self) -> float: ...

    def _note(self) -> str:
        return ""


ForecasterFactory = Callable[..., Forecaster]

#: Forecaster factories by name; each is called as ``factory(*args, quantile=q, **kwargs)``.
FORECASTERS: Registry[ForecasterFactory] = Registry("forecaster")


def _parse_value(text: str, spec: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise DopdError(f"bad argument {text!r} in forecaster spec {spec!r}") from None
    require(math.isfinite(value), f"bad argument {text!r} in forecaster spec {spec!r}")
    return value


def parse_spec(spec: str) -> tuple[str, tuple[int | float, ...], dict[str, int | float]]:
    """Split ``"name(a, b, key=c)"`` into (name, positional args, keyword args)."""
    text = spec.strip()
    require(bool(text), "empty forecaster spec")
    if "(" not in text:
        require(")" not in text, f"malformed forecaster spec {spec!r}")
        return text, (), {}
    require(text.endswith(")") and text.count("(") == 1, f"malformed forecaster spec {spec!r}")
    name, inner = text[:-1].split("(", 1)
    require(bool(name.strip()), f"malformed forecaster spec {spec!r}")
    args: list[int | float] = []
    kwargs: dict[str, int | float] = {}
    for part in (p.strip() for p in inner.split(",")) if inner.strip() else ():
        require(bool(part), f"empty argument in forecaster spec {spec!r}")
        if "=" in part:
            key, value = (s.strip() for s in part.split("=", 1))
            require(key.isidentifier(), f"bad keyword {key!r} in forecaster spec {spec!r}")
            kwargs[key] = _parse_value(value, spec)
        else:
            require(not kwargs, f"positional argument after keyword in forecaster spec {spec!r}")
            args.append(_parse_value(part, spec))
    return name.strip(), tuple(args), kwargs


def split_specs(text: str) -> list[str]:
    """Split a comma-separated list of specs, keeping commas inside parentheses."""
    specs: list[str] = []
    depth, current = 0, []
    for ch in text:
        if ch == "," and depth == 0:
            specs.append("".join(current).strip())
            current = []
            continue
        depth += (ch == "(") - (ch == ")")
        require(depth >= 0, f"unbalanced parentheses in model list {text!r}")
        current.append(ch)
    require(depth == 0, f"unbalanced parentheses in model list {text!r}")
    specs.append("".join(current).strip())
    require(all(specs), f"empty entry in model list {text!r}")
    return specs


def make_forecaster(spec: str, quantile: float = 0.9) -> Forecaster:
    """Build a forecaster from a spec such as ``"holt"``, ``"ewma(0.3)"`` or ``"arima(1,1,1)"``.

    Unknown names and bad arguments raise DopdError.
    """
    name, args, kwargs = parse_spec(spec)
    factory = FORECASTERS.get(name)
    require("quantile" not in kwargs, f"set the quantile outside the spec, not in {spec!r}")
    try:
        inspect.signature(factory).bind(*args, quantile=quantile, **kwargs)
    except TypeError as exc:
        raise DopdError(f"bad arguments for forecaster {spec!r}: {exc}") from None
    return factory(*args, quantile=quantile, **kwargs)


def known_models() -> Sequence[str]:
    return FORECASTERS.names()
