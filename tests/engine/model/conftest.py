"""Fixtures of the model tests: one torch thread, and (transformers, dopd) model pairs."""

from __future__ import annotations

import pytest
import torch
from hf_pairs import VARIANTS, Pair, build_pair


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Pair:
    torch.set_num_threads(1)
    return build_pair(request.param, tmp_path_factory.mktemp(request.param))
