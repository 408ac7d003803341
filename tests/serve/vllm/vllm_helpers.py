"""Helpers of the tests on real ``vllm serve`` instances (fixtures in conftest.py).

They need the vLLM environment that ``scripts/install_vllm.sh`` creates (``.venv-vllm``); without
it every test here is skipped with that reason, so a machine or CI run without vLLM still passes.
The checkpoint is a tiny random Llama that the vLLM environment's transformers writes (head
dimension 64: vLLM's CPU attention has no kernel for smaller ones) with dopd-tiny's byte
tokenizer beside it, so the front end and vLLM tokenize alike.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from dopd.errors import DopdError
from dopd.serve.vllm.launch import vllm_python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running ``dopd serve`` process."""

    proc: subprocess.Popen[str]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30)

    def post(self, path: str, body: object) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=60)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM, then SIGKILL to its process group if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

try:
    VLLM_PYTHON: str | None = vllm_python()
except DopdError:
    VLLM_PYTHON = None

VLLM_START_TIMEOUT_S = 420.0

_WRITE = """
import sys, torch, transformers
torch.manual_seed(0)
cfg = transformers.LlamaConfig(hidden_size=128, intermediate_size=192, num_hidden_layers=2,
    num_attention_heads=2, num_key_value_heads=1, vocab_size=300, max_position_embeddings=512,
    rms_norm_eps=1e-5, bos_token_id=256, eos_token_id=257, rope_theta=10000.0)
m = transformers.LlamaForCausalLM(cfg).eval()
with torch.no_grad():
    for p in m.parameters():  # wide weights: greedy choices far from ties
        p.normal_(0, 0.5 if p.dim() > 1 else 0.1)
m.generation_config.pad_token_id = 258
m.save_pretrained(sys.argv[1])
"""


def write_tiny_llama(folder: Path) -> Path:
    """A tiny random Llama checkpoint with dopd-tiny's tokenizer in ``folder``."""
    from dopd.engine.model import tiny_tokenizer

    assert VLLM_PYTHON is not None
    subprocess.run([VLLM_PYTHON, "-c", _WRITE, str(folder)], check=True,
                   capture_output=True, timeout=300)
    tiny_tokenizer().save(folder)
    return folder


def fleet_args(model: Path, n: int, *extra: str, log_dir: Path | None = None) -> list[str]:
    """``dopd serve`` arguments of a launched fleet of ``n`` vLLM instances on free ports."""
    ports = [free_port() for _ in range(2 * n)]
    args = ["--engine", "vllm", "--instances", str(n), "--model", str(model),
            "--dtype", "float32", "--max-model-len", "512", "--threads", "1",
            "--vllm-port", str(ports[0]), "--vllm-side-port", str(ports[1]),
            "--vllm-metrics-period", "0.5", "--vllm-start-timeout", "400", *extra]
    if log_dir is not None:
        args += ["--vllm-log-dir", str(log_dir)]
    return args


@dataclass
class Upstream:
    """``vllm serve`` processes launched for a test module (as the fleet launches them)."""

    urls: list[str]
    procs: list[object]


def launch_upstream(model: Path, n: int, log_dir: Path) -> Upstream:
    """``n`` ``vllm serve`` instances of ``model`` (the fleet's own launch specs), healthy."""
    from dopd.serve.vllm.fleet import _Process
    from dopd.serve.vllm.launch import LaunchSpec

    assert VLLM_PYTHON is not None
    specs = [LaunchSpec(str(model), free_port(), free_port(), threads=1, max_model_len=512,
                        dtype="float32") for _ in range(n)]
    procs = [_Process(s.argv(VLLM_PYTHON), s.env(), log_dir / f"vllm-{i}.log")
             for i, s in enumerate(specs)]
    up = Upstream([f"http://127.0.0.1:{s.port}" for s in specs], procs)
    wait_healthy(up, VLLM_START_TIMEOUT_S, "vllm serve")
    return up


def wait_healthy(up: Upstream, timeout_s: float, what: str, period_s: float = 0.5) -> None:
    """Wait until every instance of ``up`` answers ``/health``; on an instance process that
    exits (its ``alive()`` is False) or after ``timeout_s``, stop them all and raise."""
    deadline = time.monotonic() + timeout_s
    for url, proc in zip(up.urls, up.procs, strict=True):
        while True:
            if not proc.alive():  # type: ignore[attr-defined]
                stop_upstream(up)
                raise RuntimeError(f"{what} exited: {proc.detail()}")  # type: ignore[attr-defined]
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                stop_upstream(up)
                raise RuntimeError(f"{what} at {url} not healthy in time")
            time.sleep(period_s)


def stop_upstream(up: Upstream) -> None:
    for proc in up.procs:
        proc.terminate(10.0)  # type: ignore[attr-defined]


def attach_args(model: Path, up: Upstream, *extra: str) -> list[str]:
    """``dopd serve`` arguments attaching to ``up``."""
    args = ["--engine", "vllm", "--instances", str(len(up.urls)), "--model", str(model),
            "--vllm-metrics-period", "0.5", *extra]
    for url in up.urls:
        args += ["--vllm-url", url]
    return args


def start_fleet_server(*args: str, timeout_s: float = 0.0) -> Server:
    """``dopd serve`` with ``args``, healthy (vLLM instances start slower than dopd's)."""
    port = free_port()
    cmd = [sys.executable, "-m", "dopd.cli.main", "serve", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    server = Server(proc, port)
    deadline = time.monotonic() + (timeout_s or VLLM_START_TIMEOUT_S)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(f"dopd serve exited with {proc.returncode}: {out[-2000:]}")
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError("dopd serve did not become healthy in time")
