"""The experiments' default realism: seeded mismatch per scenario, the oracle ablation."""

from __future__ import annotations

import pytest

from dopd.errors import DopdError
from dopd.experiments.realism import Realism, apply_realism
from dopd.experiments.suites import get_suite
from dopd.sim.api import TruthSpec


def test_default_draws_a_seeded_bias_and_noise_per_scenario() -> None:
    realism = Realism()
    truths = [realism.truth(0, i) for i in range(40)]
    assert truths == [Realism().truth(0, i) for i in range(40)]
    assert truths != [realism.truth(1, i) for i in range(40)]
    assert all(-0.2 <= t.model_bias <= 0.2 and 0.05 <= t.step_noise <= 0.10 for t in truths)
    assert len({t.model_bias for t in truths}) > 30
    assert min(t.model_bias for t in truths) < -0.1 and max(t.model_bias for t in truths) > 0.1
    assert "drawn per scenario" in realism.describe()


def test_oracle_and_fixed_mismatch() -> None:
    assert Realism(oracle=True).truth(3, 2) == TruthSpec()
    fixed = Realism(bias=-0.3, noise=0.2).truth(3, 2)
    assert (fixed.model_bias, fixed.step_noise) == (-0.3, 0.2)
    with pytest.raises(DopdError):
        Realism(oracle=True, bias=0.1)
    with pytest.raises(DopdError):
        Realism(noise_range=(0.2, 0.1))


def test_apply_realism_sets_every_scenario() -> None:
    suite = get_suite("smoke")
    real = apply_realism(suite, Realism(calibration=False))
    for index, scenario in enumerate(real.scenarios):
        assert scenario.cluster.truth == Realism().truth(suite.seed, index)
        assert not scenario.cluster.online_calibration
    oracle = apply_realism(suite, Realism(oracle=True))
    assert all(s.cluster.truth.is_oracle for s in oracle.scenarios)
