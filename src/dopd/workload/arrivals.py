"""Arrival processes: when synthetic requests arrive.

Every process is a frozen dataclass with :meth:`ArrivalProcess.sample`, which draws ascending
arrival times (float64 seconds from 0) with a numpy ``Generator``, either all arrivals in
``[0, duration_s)`` or exactly the first ``count`` ones. The same generator state always gives the
same times. :data:`ARRIVALS` maps spec names to factories for
:func:`dopd.workload.spec.parse_arrival`.

- :class:`Poisson` and :class:`Gamma` are stationary renewal processes (the first arrival is
  drawn from the equilibrium residual gap, so the expected count in ``[0, T)`` is exactly
  ``rate * T``).
- :class:`StepRate` and :class:`OnOff` are Poisson processes with a piecewise-constant
  intensity (deterministic, or a random on/off Markov chain), sampled exactly by time rescaling:
  unit-rate Poisson points mapped through the inverse cumulative intensity.
- :class:`Diurnal` is a Poisson process with a sinusoidal intensity, sampled exactly by thinning.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dopd.errors import DopdError, require
from dopd.registry import Registry


class ArrivalProcess(ABC):
    """A random point process on ``[0, inf)`` of request arrival times."""

    def sample(
        self,
        rng: np.random.Generator,
        *,
        duration_s: float | None = None,
        count: int | None = None,
    ) -> np.ndarray:
        """Arrival times (ascending float64): all in ``[0, duration_s)``, or the first ``count``.

        Exactly one of ``duration_s`` (> 0) and ``count`` (>= 0) must be given.
        """
        require(
            (duration_s is None) != (count is None),
            "give exactly one of duration_s and count for arrivals",
        )
        if duration_s is not None:
            require(
                math.isfinite(duration_s) and duration_s > 0,
                f"arrival duration must be > 0 s, got {duration_s}",
            )
            times = self._until(rng, float(duration_s))
            return times[times < duration_s]
        assert count is not None
        require(count >= 0, f"arrival count must be >= 0, got {count}")
        if count == 0:
            return np.empty(0, dtype=np.float64)
        times = self._first(rng, int(count))
        assert times.size == count
        return times

    @abstractmethod
    def expected_count(self, duration_s: float) -> float:
        """Expected number of arrivals in ``[0, duration_s)``."""

    @abstractmethod
    def _until(self, rng: np.random.Generator, duration_s: float) -> np.ndarray: ...

    @abstractmethod
    def _first(self, rng: np.random.Generator, count: int) -> np.ndarray: ...


def _check_rate(value: float, what: str, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    require(ok, f"{what} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


class _Renewal(ArrivalProcess):
    """Stationary renewal process: i.i.d. gaps, the first one from the equilibrium residual."""

    rate: float

    @abstractmethod
    def _gaps(self, rng: np.random.Generator, n: int) -> np.ndarray: ...

    @abstractmethod
    def _residual(self, rng: np.random.Generator) -> float: ...

    def expected_count(self, duration_s: float) -> float:
        return self.rate * duration_s

    def _first(self, rng: np.random.Generator, count: int) -> np.ndarray:
        first = self._residual(rng)
        return first + np.concatenate(([0.0], np.cumsum(self._gaps(rng, count - 1))))

    def _until(self, rng: np.random.Generator, duration_s: float) -> np.ndarray:
        mean = self.rate * duration_s
        chunk = int(mean + 6 * math.sqrt(mean) + 16)
        start = self._residual(rng)
        parts = [np.array([start])]
        last = start
        while last < duration_s:
            times = last + np.cumsum(self._gaps(rng, chunk))
            parts.append(times)
            last = float(times[-1])
        return np.concatenate(parts)


@dataclass(frozen=True)
class Poisson(_Renewal):
    """Poisson arrivals at ``rate`` requests per second (exponential gaps, CV 1)."""

    rate: float

    def __post_init__(self) -> None:
        _check_rate(self.rate, "Poisson rate")

    def _gaps(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.exponential(1.0 / self.rate, size=n)

    def _residual(self, rng: np.random.Generator) -> float:
        return float(rng.exponential(1.0 / self.rate))


@dataclass(frozen=True)
class Gamma(_Renewal):
    """Renewal arrivals with Gamma gaps of mean ``1/rate`` and coefficient of variation ``cv``.

    ``cv > 1`` is bursty, ``cv < 1`` more regular than Poisson; ``cv == 1`` is Poisson.
    """

    rate: float
    cv: float

    def __post_init__(self) -> None:
        _check_rate(self.rate, "Gamma rate")
        require(math.isfinite(self.cv) and self.cv > 0, f"Gamma cv must be > 0, got {self.cv}")

    @property
    def _shape(self) -> float:
        return 1.0 / (self.cv * self.cv)

    def _gaps(self, rng: np.random.Generator, n: int) -> np.ndarray:
        shape = self._shape
        return rng.gamma(shape, 1.0 / (self.rate * shape), size=n)

    def _residual(self, rng: np.random.Generator) -> float:
        # Equilibrium residual = U * (size-biased gap), and size-biasing Gamma(k) gives Gamma(k+1).
        shape = self._shape
        return float(rng.random() * rng.gamma(shape + 1.0, 1.0 / (self.rate * shape)))


def _cumulative(edges: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Cumulative intensity at ``edges`` for rate ``rates[k]`` on ``[edges[k], edges[k+1])``."""
    return np.concatenate(([0.0], np.cumsum(rates * np.diff(edges))))


def _rescale_until(
    rng: np.random.Generator, edges: np.ndarray, rates: np.ndarray
) -> np.ndarray:
    """Exact Poisson sample on ``[edges[0], edges[-1])`` for a piecewise-constant intensity."""
    cum = _cumulative(edges, rates)
    total = float(cum[-1])
    unit = np.sort(rng.uniform(0.0, total, size=rng.poisson(total)))
    return np.interp(unit, cum, edges)


@dataclass(frozen=True)
class StepRate(ArrivalProcess):
    """Poisson arrivals whose rate steps: ``rates[i]`` from ``times[i]`` until ``times[i+1]``.

    ``times`` start at 0 and increase strictly; the last rate holds forever. Rates may be 0
    (a silent period) but the last one must be > 0 to draw a count.
    """

    times: tuple[float, ...]
    rates: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "times", tuple(float(t) for t in self.times))
        object.__setattr__(self, "rates", tuple(float(r) for r in self.rates))
        require(len(self.times) >= 1, "a step schedule needs at least one (time, rate)")
        require(len(self.times) == len(self.rates), "step times and rates differ in length")
        require(self.times[0] == 0.0, f"step times must start at 0, got {self.times[0]}")
        require(bool(np.all(np.diff(self.times) > 0)), "step times must increase")
        for rate in self.rates:
            _check_rate(rate, "step rate", allow_zero=True)

    @classmethod
    def of(cls, schedule: list[tuple[float, float]]) -> StepRate:
        """From a list of ``(time_s, rate)`` pairs."""
        return cls(tuple(t for t, _ in schedule), tuple(r for _, r in schedule))

    def rate_at(self, t: np.ndarray | float) -> np.ndarray:
        index = np.searchsorted(np.asarray(self.times), t, side="right") - 1
        return np.asarray(self.rates)[index]

    def _schedule(self, end_s: float) -> tuple[np.ndarray, np.ndarray]:
        times = np.asarray(self.times)
        keep = times < end_s
        return np.append(times[keep], end_s), np.asarray(self.rates)[keep]

    def expected_count(self, duration_s: float) -> float:
        edges, rates = self._schedule(duration_s)
        return float(_cumulative(edges, rates)[-1])

    def _until(self, rng: np.random.Generator, duration_s: float) -> np.ndarray:
        return _rescale_until(rng, *self._schedule(duration_s))

    def _first(self, rng: np.random.Generator, count: int) -> np.ndarray:
        require(self.rates[-1] > 0, "a step schedule ending at rate 0 cannot give a count")
        unit = np.cumsum(rng.exponential(1.0, size=count))
        last = self.times[-1]
        end = last + max(0.0, unit[-1] - self.expected_count(last)) / self.rates[-1] + 1.0
        edges, rates = self._schedule(end)
        return np.interp(unit, _cumulative(edges, rates), edges)


@dataclass(frozen=True)
class OnOff(ArrivalProcess):
    """Bursts: a Markov-modulated Poisson process with two states.

    The source stays ``on`` for an exponential time of mean ``mean_on_s`` (arrivals at
    ``rate_on``), then ``off`` for mean ``mean_off_s`` (arrivals at ``rate_off``, may be 0), and so
    on, starting ``on`` unless ``start_on`` is False.
    """

    rate_on: float
    rate_off: float
    mean_on_s: float
    mean_off_s: float
    start_on: bool = True

    def __post_init__(self) -> None:
        _check_rate(self.rate_on, "on rate")
        _check_rate(self.rate_off, "off rate", allow_zero=True)
        _check_rate(self.mean_on_s, "mean on time")
        _check_rate(self.mean_off_s, "mean off time")

    @property
    def mean_rate(self) -> float:
        """Long-run mean arrival rate."""
        on, off = self.mean_on_s, self.mean_off_s
        return (self.rate_on * on + self.rate_off * off) / (on + off)

    def expected_count(self, duration_s: float) -> float:
        pi_on = self.mean_on_s / (self.mean_on_s + self.mean_off_s)
        speed = 1.0 / self.mean_on_s + 1.0 / self.mean_off_s
        p0 = 1.0 if self.start_on else 0.0
        time_on = pi_on * duration_s + (p0 - pi_on) * (-math.expm1(-speed * duration_s)) / speed
        return self.rate_off * duration_s + (self.rate_on - self.rate_off) * time_on

    def _periods(
        self, rng: np.random.Generator, enough: Callable[[np.ndarray, np.ndarray], bool]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Period edges and rates, extended in batches until ``enough(edges, rates)`` holds."""
        first, second = (
            (self.mean_on_s, self.rate_on), (self.mean_off_s, self.rate_off)
        ) if self.start_on else ((self.mean_off_s, self.rate_off), (self.mean_on_s, self.rate_on))
        edges = np.zeros(1)
        rates = np.empty(0)
        batch = 64
        while True:
            durations = rng.exponential(1.0, size=(batch, 2)) * [first[0], second[0]]
            edges = np.concatenate((edges, edges[-1] + np.cumsum(durations.ravel())))
            rates = np.concatenate((rates, np.tile([first[1], second[1]], batch)))
            if enough(edges, rates):
                return edges, rates
            batch *= 2

    def _until(self, rng: np.random.Generator, duration_s: float) -> np.ndarray:
        edges, rates = self._periods(rng, lambda e, _r: e[-1] >= duration_s)
        keep = edges[:-1] < duration_s
        return _rescale_until(rng, np.append(edges[:-1][keep], duration_s), rates[keep])

    def _first(self, rng: np.random.Generator, count: int) -> np.ndarray:
        unit = np.cumsum(rng.exponential(1.0, size=count))
        edges, rates = self._periods(rng, lambda e, r: _cumulative(e, r)[-1] >= unit[-1])
        return np.interp(unit, _cumulative(edges, rates), edges)


@dataclass(frozen=True)
class Diurnal(ArrivalProcess):
    """Poisson arrivals with a sinusoidal intensity.

    The intensity is ``rate * (1 + amplitude * sin(2 pi (t / period_s + phase)))``;

    ``amplitude`` is in [0, 1]; ``phase`` is a fraction of the period (0.25 starts at the peak).
    """

    rate: float
    amplitude: float
    period_s: float
    phase: float = 0.0

    def __post_init__(self) -> None:
        _check_rate(self.rate, "diurnal mean rate")
        require(
            0 <= self.amplitude <= 1, f"diurnal amplitude must be in [0, 1], got {self.amplitude}"
        )
        _check_rate(self.period_s, "diurnal period")
        require(math.isfinite(self.phase), "diurnal phase must be finite")

    def rate_at(self, t: np.ndarray | float) -> np.ndarray:
        angle = 2 * np.pi * (np.asarray(t, dtype=np.float64) / self.period_s + self.phase)
        return self.rate * (1.0 + self.amplitude * np.sin(angle))

    def expected_count(self, duration_s: float) -> float:
        w = 2 * math.pi / self.period_s
        phi = 2 * math.pi * self.phase
        swing = (math.cos(phi) - math.cos(w * duration_s + phi)) / w
        return self.rate * (duration_s + self.amplitude * swing)

    def _window(self, rng: np.random.Generator, start: float, length: float) -> np.ndarray:
        peak = self.rate * (1.0 + self.amplitude)
        times = start + np.sort(rng.uniform(0.0, length, size=rng.poisson(peak * length)))
        keep = rng.random(times.size) * peak < self.rate_at(times)
        return times[keep]

    def _until(self, rng: np.random.Generator, duration_s: float) -> np.ndarray:
        return self._window(rng, 0.0, duration_s)

    def _first(self, rng: np.random.Generator, count: int) -> np.ndarray:
        window = max(count / self.rate, self.period_s)
        parts, have, start = [], 0, 0.0
        while have < count:
            part = self._window(rng, start, window)
            parts.append(part)
            have += part.size
            start += window
        return np.concatenate(parts)[:count]


@dataclass(frozen=True, eq=False)
class Replay(ArrivalProcess):
    """Fixed arrival times (e.g. a trace's), ascending; ignores the generator."""

    times_s: np.ndarray

    def __post_init__(self) -> None:
        times = np.array(self.times_s, dtype=np.float64)
        require(times.ndim == 1 and times.size >= 1, "replay needs at least one arrival time")
        require(bool(np.all(np.isfinite(times))) and times[0] >= 0, "replay times must be >= 0")
        require(bool(np.all(np.diff(times) >= 0)), "replay times must be ascending")
        times.setflags(write=False)
        object.__setattr__(self, "times_s", times)

    def expected_count(self, duration_s: float) -> float:
        return float(np.searchsorted(self.times_s, duration_s, side="left"))

    def _until(self, rng: np.random.Generator, duration_s: float) -> np.ndarray:
        return self.times_s.copy()

    def _first(self, rng: np.random.Generator, count: int) -> np.ndarray:
        if count > self.times_s.size:
            raise DopdError(f"replay has {self.times_s.size} arrivals, {count} requested")
        return self.times_s[:count].copy()


def _replay_trace(path: str, scale: float = 1.0) -> Replay:
    from dopd.workload.traces import load_workload

    return Replay(load_workload(path).scale_rate(scale).arrival_s)


ARRIVALS: Registry[Any] = Registry("arrival process")
ARRIVALS.register("poisson", Poisson)
ARRIVALS.register("gamma", Gamma)
ARRIVALS.register("onoff", OnOff)
ARRIVALS.register("step", StepRate)
ARRIVALS.register("diurnal", Diurnal)
ARRIVALS.register("replay", _replay_trace)
