"""The learned latency belief of ``dopd serve``: fed from step samples, and live against a
deliberately wrong belief (``--model-bias``) in real server processes."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from dopd.errors import DopdError
from dopd.serve.live_calibration import LiveCalibration, build_live_belief
from dopd.serve.live_routing import live_router
from dopd.serve.serve_config import ServeConfig, load_serve_config
from dopd.serve.step_samples import StepSample


def _decode(calib: LiveCalibration, ratio: float, n: int) -> None:
    """``n`` decode steps that take ``ratio`` times the configured model's time."""
    base = calib.belief.base
    for i in range(n):
        count, ctx = 8 + i % 5, 4000 + 37 * i
        seconds = ratio * calib.scale * base.decode_run_time(count, ctx, 1)
        calib.observe(i % 2, [StepSample(0, 0, 0, count, ctx, seconds)])


def test_belief_learns_the_true_ratio_and_the_router_predicts_through_it() -> None:
    config = ServeConfig(mode="emulated", step_time_scale=2.0, model_bias=-0.5)
    belief = build_live_belief(config)
    calib = LiveCalibration.of(config, belief)
    router = live_router(config, belief=belief)
    before = router.context.latency.decode_coefficients(8)
    _decode(calib, ratio=1.0, n=400)  # the truth is the configured model; the belief half
    view = calib.view()
    decode = view.kinds["decode"]
    assert view.prior == pytest.approx(0.5) and view.learning
    assert decode.factor == pytest.approx(1.0, rel=0.05)
    assert decode.learned == pytest.approx(2.0, rel=0.05)
    assert set(decode.instances) == {"0", "1"}
    assert all(f == pytest.approx(1.0, rel=0.05) for f in decode.instances.values())
    assert abs(decode.mean_rel_err or 1.0) < 0.05  # the recent error has gone
    assert view.kinds["prefill"].learned == 1.0 and view.kinds["prefill"].observations == 0
    after = router.context.latency.decode_coefficients(8)
    assert after[0] / before[0] == pytest.approx(2.0, rel=0.05)  # not a stale cache


def test_without_calibration_the_error_is_measured_but_nothing_learned() -> None:
    config = ServeConfig(mode="emulated", model_bias=-0.5, calibration=False)
    calib = LiveCalibration.of(config, build_live_belief(config))
    _decode(calib, ratio=1.0, n=200)
    decode = calib.view().kinds["decode"]
    assert decode.factor == 0.5 and decode.learned == 1.0 and decode.instances == {}
    assert decode.mean_rel_err == pytest.approx(-0.5, abs=0.01)


def test_no_time_no_learning() -> None:
    config = ServeConfig(mode="emulated", step_time_scale=0.0)
    calib = LiveCalibration.of(config, build_live_belief(config))
    calib.observe(0, [StepSample(0, 0, 0, 4, 400, 0.001)] * 50)
    assert not calib.learning and calib.view().kinds["decode"].learned == 1.0


def _drive(url: str, requests: int) -> dict[str, object]:
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
    for i in range(requests):
        out = client.completions.create(model="dopd-tiny", prompt=f"calibrate {i} " * 40,
                                        max_tokens=24, temperature=0)
        assert out.choices[0].text
    state = httpx.get(url + "/v1/cluster", timeout=30).json()
    return state["calibration"]  # type: ignore[no-any-return]


def _serve_args(*extra: str) -> tuple[str, ...]:
    return ("--mode", "emulated", "--instances", "1", "--policy", "colocated",
            "--model-bias", "-0.5", *extra)


def test_live_belief_moves_toward_the_truth(server_factory: type) -> None:
    """The control plane believes steps take half their time; the emulated workers take the
    configured model's time (plus the worker's own overhead), so the learned decode factor
    moves from 0.5 toward 1 or above."""
    server = server_factory(*_serve_args())
    calib = _drive(server.url, requests=8)
    decode, prefill = calib["kinds"]["decode"], calib["kinds"]["prefill"]  # type: ignore[index]
    assert calib["enabled"] and calib["learning"] and calib["prior"] == pytest.approx(0.5)
    assert decode["observations"] >= 100
    assert decode["factor"] > 0.7, decode  # from 0.5, toward the truth (about 1)
    assert decode["factor"] < 5.0, decode
    assert decode["instances"]["0"] > 0.7
    assert prefill["observations"] >= 1 and prefill["learned"] > 1.0
    assert calib["version"] >= 1


def test_live_no_calibration_keeps_the_belief(server_factory: type) -> None:
    server = server_factory(*_serve_args("--no-calibration"))
    calib = _drive(server.url, requests=4)
    decode = calib["kinds"]["decode"]  # type: ignore[index]
    assert not calib["enabled"] and not calib["learning"]
    assert decode["learned"] == 1.0 and decode["factor"] == pytest.approx(0.5)
    assert decode["instances"] == {}
    assert decode["observations"] >= 50
    assert decode["mean_rel_err"] < -0.25  # predicted about half the observed step time


def test_config_file_and_options(tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text("[serve]\ncalibration = false\nmodel_bias = 0.25\n")
    config = load_serve_config(path, {})
    assert not config.calibration and config.model_bias == 0.25
    assert build_live_belief(config).prior == pytest.approx(1.25)
    assert load_serve_config(path, {"calibration": None}).calibration is False
    assert load_serve_config(None, {}).calibration is True
    with pytest.raises(DopdError):
        ServeConfig(model_bias=-0.95)
