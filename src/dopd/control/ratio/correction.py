"""Online calibration: correction factors from observed versus predicted TTFT and TPOT.

The solver's raw predictions come from analytic models; the live system (or the simulator)
measures the real percentiles. :class:`CorrectionFactors` keeps an exponentially weighted moving
average of the log of observed / predicted for each metric, clamped to ``[lo, hi]``, and the
solver multiplies its predicted TTFT and TPOT by the factors. Updates must use the *raw*
(uncorrected) prediction of the split that was actually running, so the factor converges to the
model's bias instead of feeding back on itself (see :func:`dopd.control.ratio.solver.predict`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from dopd.errors import require


def _ewma_log(current: float, observed: float | None, predicted: float | None, alpha: float,
              lo: float, hi: float) -> float:
    if observed is None or predicted is None:
        return current
    if not (math.isfinite(observed) and math.isfinite(predicted)) or observed <= 0 \
            or predicted <= 0:
        return current
    log_now = math.log(current)
    log_new = (1.0 - alpha) * log_now + alpha * math.log(observed / predicted)
    return min(max(math.exp(log_new), lo), hi)


@dataclass(frozen=True, slots=True)
class CorrectionFactors:
    """Multipliers applied to predicted TTFT and TPOT (1.0 = trust the model).

    ``alpha`` in (0, 1] is the weight of the newest observation; ``lo`` <= factors <= ``hi``
    bound how far one window of measurements can move the plan. Immutable: :meth:`update`
    returns a new value.
    """

    ttft: float = 1.0
    tpot: float = 1.0
    alpha: float = 0.2
    lo: float = 0.5
    hi: float = 2.0
    updates: int = 0

    def __post_init__(self) -> None:
        require(0 < self.alpha <= 1, f"correction alpha must be in (0, 1], got {self.alpha}")
        require(0 < self.lo <= 1 <= self.hi, f"correction clamp must satisfy 0 < lo <= 1 <= hi, "
                f"got [{self.lo}, {self.hi}]")
        for name in ("ttft", "tpot"):
            value = getattr(self, name)
            require(self.lo <= value <= self.hi and math.isfinite(value),
                    f"{name} correction {value} is outside [{self.lo}, {self.hi}]")

    def update(
        self,
        observed_ttft: float | None = None,
        predicted_ttft: float | None = None,
        observed_tpot: float | None = None,
        predicted_tpot: float | None = None,
    ) -> CorrectionFactors:
        """Fold in one window's observed and raw predicted latencies (same percentile).

        A metric whose pair is missing, non-finite or non-positive leaves its factor unchanged.
        """
        ttft = _ewma_log(self.ttft, observed_ttft, predicted_ttft, self.alpha, self.lo, self.hi)
        tpot = _ewma_log(self.tpot, observed_tpot, predicted_tpot, self.alpha, self.lo, self.hi)
        return replace(self, ttft=ttft, tpot=tpot, updates=self.updates + 1)

    def apply_ttft(self, predicted: float) -> float:
        """Corrected TTFT prediction."""
        return predicted * self.ttft

    def apply_tpot(self, predicted: float) -> float:
        """Corrected TPOT prediction."""
        return predicted * self.tpot
