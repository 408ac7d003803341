"""Fixtures of the tests on real ``vllm serve`` instances (helpers in ``vllm_helpers.py``).

They need the vLLM environment that ``scripts/install_vllm.sh`` creates (``.venv-vllm``); without
it every test here is skipped with that reason, so a machine or CI run without vLLM still passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from vllm_helpers import (
    VLLM_PYTHON,
    Server,
    Upstream,
    launch_upstream,
    start_fleet_server,
    stop_upstream,
    write_tiny_llama,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:  # real vLLM servers: minutes, with the other slow tests
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.slow)
    if VLLM_PYTHON is not None:
        return
    skip = pytest.mark.skip(reason="no vLLM environment (.venv-vllm): run "
                            "`bash scripts/install_vllm.sh` to run the tests on real vLLM")
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def fleet_factory() -> Iterator[object]:
    """Start ``dopd serve --engine vllm`` servers; all are stopped at the end of the test."""
    servers: list[Server] = []

    def make(*args: str) -> Server:
        server = start_fleet_server(*args)
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.stop(60)


@pytest.fixture(scope="module")
def upstream(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """Two ``vllm serve`` instances the module's dopd servers attach to."""
    up = launch_upstream(tiny_llama, 2, tmp_path_factory.mktemp("vllm-logs"))
    yield up
    stop_upstream(up)
