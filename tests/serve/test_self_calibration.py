"""Self-calibration of ``dopd serve --mode real``: the engine's measured step times become the
belief of the router, admission control and the solver; fits saved and loaded; the router's
predicted TTFT recorded per request."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from dopd.cli.main import main
from dopd.engine.profiler import SERVE_GRID, profile_document, profile_engine
from dopd.errors import DopdError
from dopd.perf.chunked import ChunkedLatencyModel
from dopd.serve.engines import EngineSpec, build_engine
from dopd.serve.live_calibration import LiveCalibration, build_live_belief
from dopd.serve.live_routing import live_router
from dopd.serve.self_calibration import fit_from_document, load_fit, save_fit
from dopd.serve.serve_config import ServeConfig
from dopd.types import RequestOutcome, RequestState, Role

# Shapes in neither the fit nor the held-back part of SERVE_GRID, which dopd serve measures.
HELD_PREFILL = ((80, 1), (320, 1), (160, 2), (40, 3))
HELD_DECODE = ((10, 100), (20, 64), (5, 300))
HELD_MIXED = ((80, 3, 200), (160, 4, 96))
ATTEMPTS = 3


@pytest.mark.slow
def test_router_predicts_held_back_shapes_within_15_percent() -> None:
    """The fit that dopd serve makes (SERVE_GRID, whole engine steps timed) is the belief; the
    router's step-time predictions through it are checked against measured steps of shapes
    the fit never saw, on the engine a real worker builds. Fit and check shapes are measured
    in the same rounds (median of 5), so a spell of load from other jobs on this shared
    machine falls on both; a measurement spoiled by one all the same is taken again (at most
    3 times); the check is on the median over the held-back shapes."""
    config = ServeConfig(mode="real", instances=1, policy="colocated")
    engine = build_engine(EngineSpec(model="dopd-tiny", role=Role.MIXED, threads=1))
    grid = dataclasses.replace(SERVE_GRID, held_back_prefill=HELD_PREFILL,
                               held_back_decode=HELD_DECODE, held_back_mixed=HELD_MIXED,
                               repeats=5)
    medians = []
    for _ in range(ATTEMPTS):
        result = profile_engine(engine, grid, wall=True)
        fit = fit_from_document(profile_document(result, {"device": "cpu"}), "measured")
        belief = build_live_belief(config)
        LiveCalibration.of(config, belief).use_fit(fit, "fitted", "self-calibration")
        latency = live_router(config, "length-aware", belief=belief).context.latency
        held = result.held_back_steps
        assert {s.kind for s in held} == {"prefill", "decode", "mixed"} and len(held) == 9
        predicted = np.array([latency.step_time(*s.sums()) for s in held])
        measured = np.array([s.step_ms / 1e3 for s in held])
        errors = np.abs(predicted / measured - 1)
        print(f"held back: {np.round(errors, 3).tolist()}, median {np.median(errors):.3f}")
        medians.append(float(np.median(errors)))
        if medians[-1] <= 0.15:
            break
    assert min(medians) <= 0.15, medians


def test_fit_files_round_trip_and_bad_files(tmp_path: Path) -> None:
    document = {"form": "chunked", "coefficients": {
        "intercept_ms": 1.0, "token_ms": 0.05, "hinges": [[256.0, 0.01]], "attn_pair_ms": 0.0,
        "causal_pair_ms": 1e-5, "kv_token_ms": 1e-3, "seq_ms": 0.1},
        "held_back": {"steps": 3, "median_rel_error": 0.05, "max_rel_error": 0.1}}
    fit = fit_from_document(document, "measured", 2.5)
    save_fit(fit, tmp_path / "sub" / "fit.json")
    loaded = load_fit(tmp_path / "sub" / "fit.json")
    assert loaded.coefficients == fit.coefficients and loaded.errors("held_back") == {
        "steps": 3, "median_rel_error": 0.05, "max_rel_error": 0.1}
    model = loaded.latency_model(None, "x")
    assert isinstance(model, ChunkedLatencyModel)
    assert model.step_time(100, 10000, 1, 0, 0) == pytest.approx(
        fit.coefficients.step_ms(100, 10000, 1, 0, 0) / 1e3)
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"form": "distserve"}')
    for bad in ("missing.json", "bad.json", "other.json"):
        with pytest.raises(DopdError):
            load_fit(tmp_path / bad)


def test_config_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert ServeConfig().measures_calibration  # real mode measures by default
    assert not ServeConfig(self_calibration="off").measures_calibration
    assert not ServeConfig(mode="emulated").measures_calibration
    assert not ServeConfig(calibration_file="fit.json").measures_calibration
    assert not ServeConfig(profile="vidur-a100").measures_calibration
    for bad in ({"self_calibration": "later"}, {"save_calibration": "fit.txt"},
                {"calibration_file": "a.json", "profile": "vidur-a100"},
                {"calibration_timeout_s": 0.0}):
        with pytest.raises(DopdError):
            ServeConfig(**bad)  # type: ignore[arg-type]
    for args in (["--self-calibration", "later"], ["--save-calibration", "out/x.txt"],
                 ["--calibration", "no-such-file.json", "--mode", "emulated"]):
        try:
            code = main(["serve", "--port", "0", *args])
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
        assert code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
    off = LiveCalibration.of(ServeConfig(mode="emulated"), build_live_belief(ServeConfig()))
    assert off.view().self_calibration["status"] == "off"


def test_emulated_mode_takes_the_calibration_as_its_model(tmp_path: Path) -> None:
    """``--calibration FILE`` in emulated mode: the configured model of the belief (and of the
    emulated steps) is the fit, as in ``dopd simulate --calibration``."""
    document = {"form": "chunked", "coefficients": {
        "intercept_ms": 2.0, "token_ms": 0.05, "hinges": [], "attn_pair_ms": 0.0,
        "causal_pair_ms": 0.0, "kv_token_ms": 1e-3, "seq_ms": 0.0}}
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(document))
    config = ServeConfig(mode="emulated", calibration_file=str(path))
    belief = build_live_belief(config)
    assert isinstance(belief.base, ChunkedLatencyModel)
    assert belief.step_time(0, 0, 0, 1, 0) == pytest.approx((2.0 + 0.05 + 0.001) / 1e3)


def test_predicted_ttft_is_recorded_per_request() -> None:
    config = ServeConfig(mode="emulated")
    calib = LiveCalibration.of(config, build_live_belief(config))
    for rid, (predicted, observed) in enumerate([(0.1, 0.1), (0.2, 0.1), (0.05, 0.1)]):
        calib.on_done(None, RequestOutcome(rid, 10.0, 64, 8, RequestState.FINISHED,
                                           10.0 + observed, 11.0, predicted_ttft_s=predicted))
    calib.on_done(None, RequestOutcome(9, 10.0, 64, 0, RequestState.REJECTED))
    ttft = calib.view().ttft
    assert ttft["n"] == ttft["requests"] == 3
    assert ttft["median_abs_rel_err"] == pytest.approx(0.5)
    assert ttft["mean_rel_err"] == pytest.approx((0 + 1 - 0.5) / 3)


@pytest.mark.slow
def test_real_server_calibrates_itself_saves_and_reloads(server_factory: type,
                                                         tmp_path: Path) -> None:
    """A real dopd serve measures its engine at start, shows the fit in /v1/cluster, saves it,
    records the router's predicted TTFT of each request; a second one loads the saved fit and
    measures nothing."""
    saved = tmp_path / "fit.json"
    args = ("--instances", "1", "--policy", "colocated", "--router", "length-aware")
    server = server_factory(*args, "--save-calibration", str(saved))
    calib = server.get("/v1/cluster").json()["calibration"]
    own = calib["self_calibration"]
    assert own["status"] == "fitted" and own["source"] == "measured", own
    assert own["held_back"]["steps"] >= 6 and own["fit"]["steps"] >= 12
    assert own["measured_on"]["device"] == "cpu" and own["seconds"] > 0
    assert own["saved_to"] == str(saved) and calib["model"].startswith("self-calibration")
    assert load_fit(saved).coefficients.token_ms > 0
    for _ in range(3):
        r = httpx.post(server.url + "/v1/completions", timeout=60, json={
            "model": "dopd-tiny", "prompt": "hello " * 40, "max_tokens": 4})
        assert r.status_code == 200, r.text
    ttft = server.get("/v1/cluster").json()["calibration"]["ttft"]
    assert ttft["n"] == 3 and ttft["median_abs_rel_err"] is not None, ttft
    server.stop()
    assert "measuring" in (server.proc.stdout.read() if server.proc.stdout else "")

    again = server_factory(*args, "--calibration", str(saved))
    calib = again.get("/v1/cluster").json()["calibration"]
    assert calib["self_calibration"]["status"] == "loaded"
    assert calib["self_calibration"]["coefficients"] == own["coefficients"]
    assert "calibration" in calib["model"] and calib["version"] == 0
    again.stop()
    assert "measuring" not in (again.proc.stdout.read() if again.proc.stdout else "")
