"""The simulator's boundary: what a run takes (:class:`SimConfig`) and gives (:class:`SimResult`).

``dopd.sim.simulation.run_simulation(workload, config, policy, seed=0, progress=None) -> SimResult``
is the one entry point that the CLI, the experiment harness and the benchmarks call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from dopd.control.cluster_config import ClusterConfig
from dopd.errors import require


@dataclass(frozen=True, slots=True)
class TruthSpec:
    """How the simulated hardware (the truth) differs from the control plane's latency model
    (the belief). The default is the oracle: the belief is exactly the truth.

    - ``step_noise``: each step's time is multiplied by lognormal noise ``exp(sigma Z - sigma^2
      / 2)`` (mean-preserving: the mean step time, hence capacity, is unchanged; the median is
      ``exp(-sigma^2/2)`` of it). A macro-stepped decode run of ``k`` steps draws one factor with
      the mean and variance of the mean of ``k`` independent step factors.
    - ``model_bias``: the belief predicts ``(1 + model_bias)`` times the truth's step times
      (-0.2: the control plane thinks the GPU is 20 % faster than it is). The truth is
      unchanged, so capacity is too; only decisions suffer.
    - ``truth_calibration``: the truth comes from another source than the configured
      ``preset`` / ``calibration`` (the belief): a built-in fit or fit file (as
      ``--calibration``), ``preset:NAME`` for another roofline preset, or ``profile:NAME|DIR``
      for a measured operator profile (see ``--profile``). None: the same source.
    - ``slowdown`` from ``slowdown_at_s`` on (None: never): every step of the truth takes
      ``slowdown`` times longer (1.25: the GPU gets 25 % slower); a decode run takes the
      factor of its start.

    Seeded by the run's seed: the same seed gives the same noise.
    """

    step_noise: float = 0.0
    model_bias: float = 0.0
    truth_calibration: str | None = None
    slowdown: float = 1.0
    slowdown_at_s: float | None = None

    def __post_init__(self) -> None:
        require(0.0 <= self.step_noise <= 2.0,
                f"step noise must be in [0, 2], got {self.step_noise}")
        require(-0.9 <= self.model_bias <= 3.0,
                f"model bias must be in [-0.9, 3], got {self.model_bias}")
        require(self.slowdown > 0 and math.isfinite(self.slowdown),
                f"slowdown must be > 0, got {self.slowdown}")
        require(self.slowdown_at_s is None or self.slowdown_at_s >= 0,
                f"slowdown time must be >= 0 s, got {self.slowdown_at_s}")

    @property
    def is_oracle(self) -> bool:
        """Whether the belief is exactly the truth (no noise, bias, other source or drift)."""
        return (self.step_noise == 0.0 and self.model_bias == 0.0
                and self.truth_calibration is None
                and (self.slowdown == 1.0 or self.slowdown_at_s is None))


@dataclass(frozen=True, slots=True)
class SimConfig(ClusterConfig):
    """One simulated run's settings: the cluster the control plane plans with
    (:class:`~dopd.control.cluster_config.ClusterConfig`) plus how the simulated hardware
    differs from it (``truth``), which the control plane never sees."""

    truth: TruthSpec = TruthSpec()

    def control_view(self) -> ClusterConfig:
        """This config as the control plane sees it: without the hardware truth."""
        return self.cluster_config()


@dataclass(frozen=True)
class Timeline:
    """Cluster state sampled every ``SimConfig.timeline_s`` simulated seconds (equal-length arrays).

    ``arrivals_rps`` is the arrival rate over the last interval; ``queued_prefill_tokens`` and
    ``running_decodes`` are cluster totals at the sample time.
    """

    time_s: np.ndarray
    prefill_instances: np.ndarray
    decode_instances: np.ndarray
    mixed_instances: np.ndarray
    arrivals_rps: np.ndarray
    queued_prefill_tokens: np.ndarray
    running_decodes: np.ndarray


@dataclass(frozen=True)
class SimResult:
    """Per-request outcomes (column arrays, one per request, in request-id order) and run facts.

    ``state`` holds ``RequestState`` values; ``first_token_s`` / ``finish_s`` are NaN where the
    request never got there. ``reason`` maps request id -> why it was rejected or aborted.
    """

    policy: str
    request_id: np.ndarray
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    state: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    prefill_instance: np.ndarray
    decode_instance: np.ndarray
    timeline: Timeline
    gpu_seconds: float
    switches: int
    kv_bytes_moved: float
    sim_end_s: float
    events: int
    wall_s: float
    reason: dict[int, str] = field(default_factory=dict)
    decisions: tuple[dict[str, object], ...] = ()

    def __len__(self) -> int:
        return int(self.request_id.shape[0])
