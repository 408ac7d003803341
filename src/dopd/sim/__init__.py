"""Discrete-event simulation of a disaggregated (or colocated) LLM serving cluster.

Entry point: :func:`dopd.sim.simulation.run_simulation` (also importable from here), taking a
:class:`~dopd.sim.api.SimConfig` and returning a :class:`~dopd.sim.api.SimResult`. Cluster
policies plug in through :data:`dopd.control.policies.base.POLICIES`, routers through
:data:`dopd.control.routing.router.ROUTERS`.
"""

from __future__ import annotations

from typing import Any

from dopd.sim.api import SimConfig, SimResult, Timeline

__all__ = ["SimConfig", "SimResult", "Timeline", "run_simulation"]


def __getattr__(name: str) -> Any:
    # The runner pulls in the workload and metrics packages: import it on first use only.
    if name == "run_simulation":
        from dopd.sim.simulation import run_simulation

        return run_simulation
    raise AttributeError(f"module 'dopd.sim' has no attribute {name!r}")
