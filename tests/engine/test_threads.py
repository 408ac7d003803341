"""Default torch thread counts and device checks."""

from __future__ import annotations

import pytest

from dopd.engine.threads import (
    MAX_DEFAULT_THREADS,
    SMALL_MODEL_PARAMS,
    approx_params,
    check_device,
    default_threads,
)
from dopd.errors import DopdError


def test_small_models_get_one_thread() -> None:
    assert default_threads(SMALL_MODEL_PARAMS - 1, cores=64) == 1


def test_large_models_share_the_idle_cores() -> None:
    big = 8 * 10**9
    assert default_threads(big, cores=16) == MAX_DEFAULT_THREADS
    assert default_threads(big, cores=2) == 2
    assert default_threads(big, cores=2, busy=1) == 1  # one core busy: one thread
    assert default_threads(big, cores=8, sharers=4) == 2
    assert default_threads(big, cores=2, sharers=8) == 1


def test_approx_params_of_llama_3_8b() -> None:
    params = approx_params(4096, 14336, 32, 128256, 1024)
    assert abs(params / 8.03e9 - 1) < 0.01


def test_device_check() -> None:
    check_device("cpu")
    with pytest.raises(DopdError, match="cpu, cuda or cuda:N"):
        check_device("tpu")
