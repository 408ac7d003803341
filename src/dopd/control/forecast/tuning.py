"""Smoothing-parameter selection by grid search on one-step-ahead squared error.

Each function runs the model's recursion over a bounded history for every grid point at once
(numpy, vectorised over the grid), so tuning costs O(history x grid) array operations and no
optimiser: bounded and deterministic. The recursions are the ones in ``models.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

ALPHA_GRID: npt.NDArray[np.float64] = np.round(np.arange(0.05, 1.0001, 0.05), 2)
BETA_GRID: npt.NDArray[np.float64] = np.array([0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5])


@dataclass(frozen=True, slots=True)
class Tuned:
    """Best parameters, the model state after the history under them, and their SSE."""

    alpha: float
    beta: float
    level: float
    trend: float
    sse: float


def tune_ewma(y: npt.NDArray[np.float64], alphas: npt.NDArray[np.float64] = ALPHA_GRID) -> Tuned:
    """EWMA alpha minimising the one-step SSE over ``y`` (level starts at y[0]); len(y) >= 2."""
    level = np.full(alphas.shape, y[0])
    sse = np.zeros(alphas.shape)
    for value in y[1:].tolist():
        err = value - level
        sse += err * err
        level += alphas * err
    i = int(np.argmin(sse))
    return Tuned(float(alphas[i]), 0.0, float(level[i]), 0.0, float(sse[i]))


def tune_holt(
    y: npt.NDArray[np.float64],
    alphas: npt.NDArray[np.float64] = ALPHA_GRID,
    betas: npt.NDArray[np.float64] = BETA_GRID,
) -> Tuned:
    """Holt (alpha, beta) minimising the one-step SSE over ``y``; len(y) >= 3.

    The state starts as in :class:`~dopd.control.forecast.forecasters.HoltForecaster`
    (level y[1], trend y[1] - y[0]); errors are scored from y[2] on.
    """
    a, b = (g.ravel() for g in np.meshgrid(alphas, betas, indexing="ij"))
    level = np.full(a.shape, y[1])
    trend = np.full(a.shape, y[1] - y[0])
    sse = np.zeros(a.shape)
    for value in y[2:].tolist():
        pred = level + trend
        err = value - pred
        sse += err * err
        new_level = pred + a * err  # = a*value + (1-a)*(level+trend)
        trend = b * (new_level - level) + (1.0 - b) * trend
        level = new_level
    i = int(np.argmin(sse))
    return Tuned(float(a[i]), float(b[i]), float(level[i]), float(trend[i]), float(sse[i]))
