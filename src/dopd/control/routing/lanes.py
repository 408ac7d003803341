"""The long-prompt lane: recent prompt lengths, heavy-tail detection and the lane's size.

A :class:`LengthWindow` keeps the lengths (and idle-instance prefill costs) of the last
``size`` arriving prompts and refreshes its statistics every ``refresh`` arrivals (numpy
quantiles over the window, so O(1) amortised per arrival). The lane is open while the window is
full enough and heavy-tailed: p99 / p50 >= ``ratio``. Prompts at or above the window's
``quantile`` are long; the lane's share of the prefill instances is the long prompts' share of
the prefill time, so both groups are about equally loaded.
"""

from __future__ import annotations

import numpy as np

from dopd.errors import require

MIN_SAMPLES = 100
"""Arrivals seen before the lane may open (quantiles of fewer are noise)."""


class LengthWindow:
    """Sliding window of recent prompts; read :attr:`heavy`, :attr:`threshold` and
    :attr:`long_share` (valid after the first refresh), or :meth:`lanes`."""

    __slots__ = ("_costs", "_count", "_lens", "_next", "_since", "heavy", "long_share",
                 "quantile", "ratio", "refresh", "size", "tail_ratio", "threshold")

    def __init__(self, size: int, quantile: float, ratio: float, refresh: int = 32) -> None:
        require(size >= 1 and refresh >= 1, "length window and refresh must be >= 1")
        self.size = size
        self.quantile = quantile
        self.ratio = ratio
        self.refresh = refresh
        self._lens = np.zeros(size, dtype=np.float64)
        self._costs = np.zeros(size, dtype=np.float64)
        self._next = 0
        self._count = 0
        self._since = 0
        self.heavy = False
        self.threshold = np.inf
        self.long_share = 0.0
        self.tail_ratio = 1.0

    def observe(self, prompt_tokens: int, cost_s: float) -> None:
        """Record an arriving prompt and its prefill cost on an idle instance."""
        i = self._next
        self._lens[i] = prompt_tokens
        self._costs[i] = cost_s
        self._next = (i + 1) % self.size
        if self._count < self.size:
            self._count += 1
        self._since += 1
        if self._since >= self.refresh:
            self._since = 0
            self._update()

    def _update(self) -> None:
        n = self._count
        if n < MIN_SAMPLES:
            return
        lens, costs = self._lens[:n], self._costs[:n]
        p50, p99, cut = np.quantile(lens, [0.5, 0.99, self.quantile])
        self.tail_ratio = float(p99 / p50) if p50 > 0 else 1.0
        self.heavy = self.tail_ratio >= self.ratio
        self.threshold = float(cut)
        total = float(costs.sum())
        self.long_share = float(costs[lens >= cut].sum()) / total if total > 0 else 0.0

    def lanes(self, prefill_instances: int) -> int:
        """Prefill instances to reserve for long prompts now (0: no lane)."""
        if not self.heavy or prefill_instances < 2:
            return 0
        share = round(self.long_share * prefill_instances)
        return min(max(share, 1), prefill_instances - 1)

    def is_long(self, prompt_tokens: int) -> bool:
        return prompt_tokens >= self.threshold
