"""Run configuration: TOML loading, CLI overrides, validation and the resolved-config round trip."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from dopd.config import apply_overrides, dumps_toml, from_mapping, to_dict, write_resolved
from dopd.errors import DopdError
from dopd.sim.api import SimConfig
from dopd.sim.run_config import GoodputSearch, RunConfig, WorkloadConfig, load_run_config
from dopd.types import SLO


def write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_without_file() -> None:
    cfg = load_run_config()
    assert cfg == RunConfig()
    assert cfg.workload.synthetic
    assert isinstance(cfg.cluster, SimConfig)


def test_toml_file_sets_nested_values_and_coerces_ints_to_floats(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
policies = ["colocated", "static:2:2"]
seed = 7
[workload]
arrival = "gamma"
cv = 3
rate = 20
requests = 200
[cluster]
instances = 4
tp = 2
kv_mem_util = 0.8
[slo]
ttft_s = 0.5
tpot_s = 0.1
attainment = 0.99
""",
    )
    cfg = load_run_config(p)
    assert cfg.policies == ("colocated", "static:2:2")
    assert cfg.seed == 7
    assert cfg.workload == WorkloadConfig(arrival="gamma", cv=3.0, rate=20.0, requests=200)
    assert isinstance(cfg.workload.cv, float)
    assert isinstance(cfg.workload.rate, float)
    assert cfg.cluster.instances == 4 and cfg.cluster.tp == 2 and cfg.cluster.gpus == 8
    assert cfg.cluster.model == SimConfig().model  # untouched keys keep their defaults
    assert cfg.slo == SLO(0.5, 0.1, 0.99)


def test_cli_overrides_win_over_file(tmp_path: Path) -> None:
    p = write(tmp_path, "[cluster]\ninstances = 4\n[slo]\nttft_s = 0.5\ntpot_s = 0.1\n")
    cfg = load_run_config(p, {"cluster.instances": 6, "slo.ttft_s": 2.0, "policies": ("dopd",)})
    assert cfg.cluster.instances == 6
    assert cfg.slo.ttft_s == 2.0 and cfg.slo.tpot_s == 0.1
    assert cfg.policies == ("dopd",)


def test_relative_trace_path_resolves_next_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("x\n")
    p = write(tmp_path, '[workload]\ntrace = "t.csv"\n')
    assert load_run_config(p).workload.trace == str(tmp_path / "t.csv")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[cluster]\ninstancez = 4\n", "instancez"),
        ("[cluster]\ninstances = 'four'\n", "cluster.instances"),
        ("[cluster]\ninstances = 2.5\n", "cluster.instances"),
        ("[cluster]\nchunked_prefill = 1\n", "cluster.chunked_prefill"),
        ("[slo]\nttft_s = -1\ntpot_s = 0.1\n", "TTFT SLO"),
        ("[workload]\nrate_scale = 0\n", "rate scale"),
        ("[workload]\narrival = 'weibull'\n", "weibull"),
        ("[workload]\narrival = 'gamma:cv'\n", "KEY=VALUE"),
        ("[workload]\ncv = 0\n", "CV"),
        ("[workload]\ntrace = 'a'\nlengths = 'b'\n", "not both"),
        ("[goodput]\nlo = 2.0\nhi = 1.0\n", "lo < hi"),
        ("policies = []\n", "policy"),
        ("policies = ['a', 'a']\n", "twice"),
        ("workload = 3\n", "expected a table"),
        ("[cluster\n", "not valid TOML"),
    ],
)
def test_bad_files_raise_one_line_dopd_errors(tmp_path: Path, text: str, needle: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(DopdError, match=None) as info:
        load_run_config(p)
    msg = str(info.value)
    assert needle in msg
    assert "\n" not in msg


def test_missing_file_is_a_dopd_error(tmp_path: Path) -> None:
    with pytest.raises(DopdError, match="not found"):
        load_run_config(tmp_path / "nope.toml")


def test_unknown_override_key_is_rejected() -> None:
    with pytest.raises(DopdError, match="unknown config key"):
        apply_overrides(RunConfig(), {"cluster.gpuz": "h100"})
    with pytest.raises(DopdError, match="unknown config section"):
        apply_overrides(RunConfig(), {"nosuch.key": 1})


def test_override_revalidates_the_tree() -> None:
    with pytest.raises(DopdError, match="KV memory"):
        apply_overrides(RunConfig(), {"cluster.kv_mem_util": 1.5})


def test_optional_fields_accept_none_and_values() -> None:
    cfg = from_mapping(WorkloadConfig, {"duration_s": 30, "requests": None})
    assert cfg.duration_s == 30.0 and cfg.requests is None


def test_resolved_config_round_trips_through_toml_and_json(tmp_path: Path) -> None:
    cfg = load_run_config(
        None,
        {
            "policies": ("colocated", "static:4:4"),
            "workload.lengths": 'C:\\odd "path"/len.csv',
            "workload.duration_s": 12.5,
            "cluster.calibration": None,
            "goodput.enabled": True,
            "slo.attainment": 0.99,
        },
    )
    json_path, toml_path = write_resolved(cfg, tmp_path / "out")
    assert load_run_config(toml_path) == cfg
    assert from_mapping(RunConfig, json.loads(json_path.read_text())) == cfg
    data = tomllib.loads(dumps_toml(to_dict(cfg)))
    assert "calibration" not in data["cluster"]  # None is left out, loading restores the default
    assert data["goodput"] == to_dict(GoodputSearch(enabled=True))


def test_dumps_toml_nested_tables_are_valid_toml() -> None:
    data = {"a": 1, "t": {"x": [1.5, 2.0], "inner": {"s": "q\"\n", "b": False}}, "z": "last"}
    assert tomllib.loads(dumps_toml(data)) == data
