"""The Ray options of ``dopd serve`` and ``dopd experiment``: validation (exit code 2, one
line), and the local backend staying free of Ray."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dopd.cli.main import main
from dopd.errors import DopdError
from dopd.serve.ray_connect import check_address
from dopd.serve.serve_config import ServeConfig, load_serve_config


def test_defaults_are_the_local_backend() -> None:
    config = ServeConfig()
    assert (config.backend, config.kv_transport, config.ray_address) == ("local", "socket", None)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"backend": "kubernetes"}, "backend must be one of local, ray"),
    ({"kv_transport": "carrier-pigeon"}, "kv_transport must be one of socket, object_store"),
    ({"kv_transport": "object_store"}, "object_store needs backend ray"),
    ({"ray_address": "auto"}, "ray_address needs backend ray"),
    ({"backend": "ray", "ray_address": "http://head:8265"}, "Ray address must be auto"),
    ({"backend": "ray", "ray_cpus_per_instance": -1.0}, "must be >= 0"),
])
def test_bad_settings_are_clear_errors(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(DopdError, match=message):
        load_serve_config(None, overrides)


@pytest.mark.parametrize("address", ["auto", "10.0.0.1:6379", "ray://head.example:10001",
                                     "head:6379"])
def test_ray_addresses(address: str) -> None:
    assert check_address(address) == address


@pytest.mark.parametrize("args", [
    ["serve", "--kv-transport", "object_store"],
    ["serve", "--backend", "ray", "--ray-address", "localhost"],
    ["experiment", "smoke", "--ray-address", "auto"],
])
def test_cli_rejects_bad_ray_options(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_local_serving_does_not_import_ray() -> None:
    code = ("import sys; import dopd.serve.server, dopd.serve.api, dopd.cli.serve_cmd, "
            "dopd.experiments.suite_runner; assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
