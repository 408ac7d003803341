"""How ``dopd serve --engine vllm`` starts ``vllm serve`` processes: the vLLM venv's Python
(:func:`vllm_python`), and each instance's command line and environment
(:class:`LaunchSpec`): NixlConnector with ``kv_role`` ``kv_both`` (every instance can prefill
and decode, so a role switch is a routing decision), KV buffers in CPU memory, a side channel
per instance on loopback, UCX over TCP on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dopd.errors import DopdError

VENV_NAME = ".venv-vllm"
ENTRY = Path(__file__).with_name("entry.py")
READY = ".dopd-ready"


def repo_root() -> Path:
    """The checkout this package runs from (``src/dopd/serve/vllm`` is four levels down)."""
    return Path(__file__).resolve().parents[4]


def vllm_python(explicit: str | None = None) -> str:
    """The Python that runs vLLM: ``explicit``, else ``$DOPD_VLLM_PYTHON``, else the
    ``.venv-vllm`` of the current folder or of this checkout that the install script finished
    (its ``.dopd-ready`` marker). DopdError naming the install script when there is none."""
    for cand in (explicit, os.environ.get("DOPD_VLLM_PYTHON")):
        if cand:
            if not (Path(cand).is_file() or shutil.which(cand)):
                raise DopdError(f"no vLLM Python at {cand}")
            return cand
    for root in (Path.cwd(), repo_root()):
        py = root / VENV_NAME / "bin" / "python"
        if py.is_file() and (root / VENV_NAME / READY).is_file():
            return str(py)
    raise DopdError(f"no vLLM environment: run `bash scripts/install_vllm.sh` (creates "
                    f"{VENV_NAME}), or give --vllm-python / $DOPD_VLLM_PYTHON")


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """One ``vllm serve`` of the fleet: ``model`` (a folder or a name vLLM can load), HTTP
    ``port`` and NIXL side-channel ``side_port`` on ``host``, ``threads`` (OpenMP threads; None:
    vLLM's choice), ``kv_space_gb`` (``VLLM_CPU_KVCACHE_SPACE``, CPU builds), ``max_model_len``,
    ``dtype``, ``eager`` (no compilation: faster start), and ``extra`` arguments."""

    model: str
    port: int
    side_port: int
    host: str = "127.0.0.1"
    threads: int | None = None
    kv_space_gb: int = 1
    max_model_len: int | None = None
    dtype: str | None = None
    eager: bool = True
    extra: tuple[str, ...] = field(default_factory=tuple)

    def kv_transfer_config(self) -> str:
        return json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both",
                           "kv_buffer_device": "cpu", "kv_load_failure_policy": "recompute"})

    def argv(self, python: str) -> list[str]:
        """The command line of this instance, run by ``python``."""
        cmd = [python, str(ENTRY), "serve", self.model, "--host", self.host,
               "--port", str(self.port), "--served-model-name", "dopd-upstream",
               "--kv-transfer-config", self.kv_transfer_config(),
               "--disable-uvicorn-access-log"]
        if self.max_model_len is not None:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.dtype is not None:
            cmd += ["--dtype", self.dtype]
        if self.eager:
            cmd += ["--enforce-eager"]
        return cmd + list(self.extra)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of this instance (``base``: this process's)."""
        env = dict(os.environ if base is None else base)
        env.update(VLLM_NIXL_SIDE_CHANNEL_HOST=self.host,
                   VLLM_NIXL_SIDE_CHANNEL_PORT=str(self.side_port),
                   UCX_TLS="tcp,self", UCX_NET_DEVICES="lo",
                   VLLM_CPU_KVCACHE_SPACE=str(self.kv_space_gb),
                   PYTHONUNBUFFERED="1")
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)
            env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
        # the vLLM venv has its own packages: none of this interpreter's
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONHOME", None)
        return env


def python_of_this_process() -> str:
    """This interpreter (a test's fallback when the vLLM venv is the running one)."""
    return sys.executable
