"""The parts of the vLLM fleet that need no vLLM: its /metrics reading, launch command lines,
configuration checks and the missing-environment error (tests/serve/vllm/ runs real vLLM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dopd.engine.model import SamplingParams
from dopd.errors import DopdError
from dopd.serve.serve_config import ServeConfig
from dopd.serve.vllm.instance import sampling_body
from dopd.serve.vllm.launch import ENTRY, LaunchSpec, vllm_python
from dopd.serve.vllm.prom import MetricsReading, parse_samples

SCRAPE = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="400"} 1.0
vllm:prompt_tokens_total{engine="0",model_name="m"} 120.0
vllm:generation_tokens_total{engine="0",model_name="m"} 40.0
vllm:inter_token_latency_seconds_sum{engine="0",model_name="m"} 2.0
vllm:inter_token_latency_seconds_count{engine="0",model_name="m"} 40.0
vllm:weird{a="x\\"y"} 1e3
not a sample line
"""


def test_a_scrape_reads_load_cache_and_step_time() -> None:
    r = MetricsReading.parse(SCRAPE)
    assert (r.running, r.waiting, r.kv_blocks) == (3, 2, 400)
    assert r.kv_usage == 0.25 and r.generation_tokens == 40
    later = MetricsReading.parse(SCRAPE.replace("} 2.0\nvllm:inter_token_latency_seconds_count",
                                                "} 3.0\nvllm:inter_token_latency_seconds_count")
                                 .replace("count{engine=\"0\",model_name=\"m\"} 40.0",
                                          "count{engine=\"0\",model_name=\"m\"} 50.0"))
    assert later.recent_step_s(r) == pytest.approx(0.1)
    assert r.recent_step_s(None) == 0.0 and r.recent_step_s(r) == 0.0
    assert parse_samples(SCRAPE)["vllm:weird"] == [({"a": 'x\\"y'}, 1000.0)]
    assert MetricsReading.parse("") == MetricsReading()


def test_launch_command_and_environment() -> None:
    spec = LaunchSpec("/m", 8100, 5600, threads=2, max_model_len=512, dtype="float32",
                      extra=("--seed", "1"))
    argv = spec.argv("py")
    assert argv[:4] == ["py", str(ENTRY), "serve", "/m"]
    kv = json.loads(argv[argv.index("--kv-transfer-config") + 1])
    assert kv["kv_connector"] == "NixlConnector" and kv["kv_role"] == "kv_both"
    assert "--enforce-eager" in argv and argv[-2:] == ["--seed", "1"]
    env = spec.env({"PYTHONPATH": "x", "HOME": "h"})
    assert env["VLLM_NIXL_SIDE_CHANNEL_PORT"] == "5600" and env["UCX_TLS"] == "tcp,self"
    assert env["UCX_NET_DEVICES"] == "lo" and env["OMP_NUM_THREADS"] == "2"
    assert "PYTHONPATH" not in env and env["HOME"] == "h"
    # the launcher imports nothing of dopd: the vLLM venv does not have it
    assert "dopd" not in Path(ENTRY).read_text().split('"""')[2]


def test_sampling_fields_sent_to_vllm() -> None:
    assert sampling_body(SamplingParams(max_tokens=4, temperature=0)) == \
        {"temperature": 0, "top_p": 1.0}
    body = sampling_body(SamplingParams(top_k=5, seed=3, stop=("x",), stop_token_ids=(7,),
                                        ignore_eos=True))
    assert body["top_k"] == 5 and body["seed"] == 3 and body["stop"] == ["x"]
    assert body["stop_token_ids"] == [7] and body["ignore_eos"] is True


@pytest.mark.parametrize(("fields", "message"), [
    ({"vllm_urls": ("http://a:1",)}, "vllm_urls need engine vllm"),
    ({"engine": "sglang"}, "engine must be one of"),
    ({"engine": "vllm", "backend": "ray"}, "no --backend ray"),
    ({"engine": "vllm", "instances": 2, "vllm_urls": ("http://a:1",)}, "1 vLLM URLs for 2"),
    ({"engine": "vllm", "instances": 1, "vllm_urls": ("a:1",)}, "http:// or https://"),
    ({"engine": "vllm", "vllm_metrics_period_s": 0.0}, "vllm_metrics_period_s must be > 0"),
])
def test_vllm_settings_are_checked(fields: dict[str, object], message: str) -> None:
    with pytest.raises(DopdError, match=message):
        ServeConfig(**fields)  # type: ignore[arg-type]


def test_vllm_engine_does_not_self_calibrate_dopds_engine() -> None:
    assert ServeConfig().measures_calibration
    assert not ServeConfig(engine="vllm").measures_calibration


def test_a_missing_vllm_environment_names_the_install_script(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOPD_VLLM_PYTHON", raising=False)
    with pytest.raises(DopdError, match="no vLLM Python at"):
        vllm_python(str(tmp_path / "nope"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("dopd.serve.vllm.launch.repo_root", lambda: tmp_path)
    with pytest.raises(DopdError, match=r"scripts/install_vllm\.sh"):
        vllm_python()
    py = tmp_path / ".venv-vllm" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text("")
    with pytest.raises(DopdError, match="no vLLM environment"):  # an unfinished install
        vllm_python()
    (tmp_path / ".venv-vllm" / ".dopd-ready").write_text("")
    assert vllm_python() == str(py)
