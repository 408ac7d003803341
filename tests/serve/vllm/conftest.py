"""Fixtures of the tests on real ``vllm serve`` instances.

They need the vLLM environment that ``scripts/install_vllm.sh`` creates (``.venv-vllm``); without
it every test here is skipped with that reason, so a machine or CI run without vLLM still passes.
The checkpoint is a tiny random Llama that the vLLM environment's transformers writes (head
dimension 64: vLLM's CPU attention has no kernel for smaller ones) with dopd-tiny's byte
tokenizer beside it, so the front end and vLLM tokenize alike.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dopd.errors import DopdError
from dopd.serve.vllm.launch import vllm_python

from ..conftest import Server, free_port, start_server

try:
    VLLM_PYTHON: str | None = vllm_python()
except DopdError:
    VLLM_PYTHON = None

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if VLLM_PYTHON is not None:
        return
    skip = pytest.mark.skip(reason="no vLLM environment (.venv-vllm): run "
                            "`bash scripts/install_vllm.sh` to run the tests on real vLLM")
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(skip)


def write_tiny_llama(folder: Path) -> Path:
    """A tiny random Llama checkpoint with dopd-tiny's tokenizer in ``folder``."""
    from dopd.engine.model import tiny_tokenizer

    assert VLLM_PYTHON is not None
    subprocess.run([VLLM_PYTHON, "-c", _WRITE, str(folder)], check=True,
                   capture_output=True, timeout=300)
    tiny_tokenizer().save(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def fleet_args(model: Path, n: int, *extra: str, log_dir: Path | None = None) -> list[str]:
    """``dopd serve`` arguments of a launched fleet of ``n`` vLLM instances on free ports."""
    ports = [free_port() for _ in range(2 * n)]
    args = ["--engine", "vllm", "--instances", str(n), "--model", str(model),
            "--dtype", "float32", "--max-model-len", "512", "--threads", "1",
            "--vllm-port", str(ports[0]), "--vllm-side-port", str(ports[1]),
            "--vllm-metrics-period", "0.5", *extra]
    if log_dir is not None:
        args += ["--vllm-log-dir", str(log_dir)]
    return args


@pytest.fixture
def fleet_factory() -> Iterator[object]:
    """Start ``dopd serve --engine vllm`` fleets; all are stopped at the end of the test."""
    servers: list[Server] = []

    def make(*args: str) -> Server:
        server = start_server(*args)
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.stop(60)
