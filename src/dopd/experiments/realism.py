"""How far an experiment's control plane is from the truth: the realistic default, the oracle.

``dopd experiment`` runs every scenario with a seeded mismatch between the simulated hardware
(the truth) and the control plane's latency model (the belief), as no deployment predicts its
GPUs exactly (see :class:`~dopd.sim.api.TruthSpec`): by default a model bias drawn per scenario
uniformly in ``[-bias_range, +bias_range]`` and a step noise drawn uniformly in
``noise_range``, from the suite's seed and the scenario's position; the belief calibrates itself
online. ``--oracle`` (the belief is the truth) and ``--no-calibration`` are ablations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from dopd.errors import require
from dopd.experiments.suite import Suite
from dopd.sim.api import TruthSpec

_SALT = 0x0B1A5


@dataclass(frozen=True, slots=True)
class Realism:
    """The mismatch of an experiment (see the module docstring).

    ``bias`` / ``noise`` fix the model bias / step noise of every scenario instead of drawing
    them; ``oracle`` turns every mismatch off; ``calibration`` is the belief's online
    calibration.
    """

    oracle: bool = False
    bias: float | None = None
    noise: float | None = None
    bias_range: float = 0.2
    noise_range: tuple[float, float] = (0.05, 0.10)
    calibration: bool = True

    def __post_init__(self) -> None:
        require(0 <= self.bias_range < 0.9, f"bias range must be in [0, 0.9), got "
                f"{self.bias_range}")
        lo, hi = self.noise_range
        require(0 <= lo <= hi <= 2, f"noise range must be 0 <= lo <= hi <= 2, got "
                f"{self.noise_range}")
        require(not self.oracle or (self.bias is None and self.noise is None),
                "an oracle run has no bias or noise")
        TruthSpec(step_noise=self.noise or 0.0, model_bias=self.bias or 0.0)  # validates

    def truth(self, seed: int, index: int) -> TruthSpec:
        """The truth of the scenario at ``index`` of a suite with ``seed``."""
        if self.oracle:
            return TruthSpec()
        rng = np.random.default_rng([seed, index, _SALT])
        bias = float(rng.uniform(-self.bias_range, self.bias_range))
        noise = float(rng.uniform(*self.noise_range))
        return TruthSpec(step_noise=round(noise if self.noise is None else self.noise, 4),
                         model_bias=round(bias if self.bias is None else self.bias, 4))

    def describe(self) -> str:
        if self.oracle:
            return "oracle (the control plane's latency model is the truth)"
        bias = (f"model bias {self.bias:+g}" if self.bias is not None
                else f"model bias drawn per scenario in +-{self.bias_range:g}")
        noise = (f"step noise {self.noise:g}" if self.noise is not None
                 else f"step noise drawn in [{self.noise_range[0]:g}, {self.noise_range[1]:g}]")
        cal = "online calibration" if self.calibration else "no calibration"
        return f"realistic: {bias}, {noise} (seeded), {cal}"


def apply_realism(suite: Suite, realism: Realism) -> Suite:
    """``suite`` with every scenario's cluster given its truth and calibration setting."""
    scenarios = tuple(
        dataclasses.replace(s, cluster=dataclasses.replace(
            s.cluster, truth=realism.truth(suite.seed, index),
            online_calibration=realism.calibration))
        for index, s in enumerate(suite.scenarios))
    return dataclasses.replace(suite, scenarios=scenarios)
