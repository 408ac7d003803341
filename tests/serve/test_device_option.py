"""Where real-mode workers put their model: ``--device`` and ``--dtype``."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dopd.errors import DopdError
from dopd.serve.engines import EngineSpec, build_engine, resolve_device
from dopd.serve.serve_config import ServeConfig
from dopd.types import Role

HAS_GPU = torch.cuda.is_available()


def test_emulated_workers_and_cpu_stay_on_the_cpu() -> None:
    assert resolve_device("auto", 3, "emulated") == "cpu"
    assert resolve_device("cuda", 0, "emulated") == "cpu"
    assert resolve_device("cpu", 5, "real") == "cpu"


@pytest.mark.skipif(HAS_GPU, reason="checks the CPU fallback")
def test_auto_falls_back_to_the_cpu_and_a_gpu_request_fails_clearly() -> None:
    assert resolve_device("auto", 1, "real") == "cpu"
    for device in ("cuda", "cuda:0"):
        with pytest.raises(DopdError, match="sees no GPU"):
            resolve_device(device, 0, "real")


@pytest.mark.skipif(not HAS_GPU, reason="needs a GPU")
def test_workers_spread_over_the_visible_gpus() -> None:
    count = torch.cuda.device_count()
    assert [resolve_device("auto", i, "real") for i in range(count + 1)][-1] == "cuda:0"
    engine = build_engine(EngineSpec("dopd-tiny", Role.MIXED, device="auto", index=0))
    assert engine.model.device.type == "cuda"


def test_config_rejects_bad_devices_and_dtypes() -> None:
    assert ServeConfig(device="cuda:1", dtype="bfloat16").device == "cuda:1"
    for kwargs in ({"device": "gpu"}, {"device": "cuda:x"}, {"dtype": "int8"}):
        with pytest.raises(DopdError):
            ServeConfig(**kwargs)  # type: ignore[arg-type]


def test_dtype_reaches_the_real_engine() -> None:
    engine = build_engine(EngineSpec("dopd-tiny", Role.MIXED, device="cpu", dtype="bfloat16"))
    assert engine.model.dtype == torch.bfloat16


def test_serve_cli_rejects_a_bad_device_with_exit_code_2() -> None:
    out = subprocess.run([sys.executable, "-m", "dopd.cli.main", "serve", "--device", "tpu"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "device must be auto, cpu, cuda or cuda:N" in out.stderr
