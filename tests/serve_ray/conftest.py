"""Fixtures of the Ray backend tests: one local Ray cluster (2 CPUs) for the whole session,
started in this process, which ``dopd serve --backend ray`` processes join by its address.

``server_factory`` has the local serving tests' signature (``tests/serve/conftest.py``, whose
factory starts and stops the processes) but starts servers on Ray, so the local backend's
end-to-end tests, reused here as they are, run against Ray actors.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from local_checks import conftest as serve_conftest

local_server_factory = serve_conftest.server_factory

RAY_CPUS = 2


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """The GCS address of a local Ray cluster with 2 CPUs (this process is its first driver)."""
    ray = pytest.importorskip("ray")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    if not ray.is_initialized():
        ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False,
                 namespace="dopd")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def server_factory(local_server_factory, ray_address):  # type: ignore[no-untyped-def]
    """``server_factory(*args)``: a ``dopd serve --backend ray`` process on the session's
    cluster, each instance asking for half a CPU."""
    def start(*args: str, api_key: str | None = None):  # type: ignore[no-untyped-def]
        return local_server_factory("--backend", "ray", "--ray-address", ray_address,
                                    "--ray-cpus-per-instance", "0.5", *args, api_key=api_key)
    return start
