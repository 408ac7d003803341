"""The shipped operator profiles, the profile-based latency model and the preset fit."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dopd.errors import DopdError
from dopd.perf import BatchShape, build_latency_model, get_preset
from dopd.perf.model_catalog import get_model
from dopd.perf.preset_fit import FITTED_FIELDS, fit_preset
from dopd.perf.profile_fidelity import (
    fit_half,
    preset_profile_fidelity,
    profile_model_fidelity,
    profile_points,
)
from dopd.perf.profiled import ProfileLatencyModel
from dopd.perf.profiles import builtin_profile_dir, load_profile, verify_manifest


def test_shipped_files_match_their_manifest_checksums() -> None:
    folder = builtin_profile_dir("vidur-a100")
    digests = verify_manifest(folder)
    assert set(digests) == {"Meta-Llama-3-8B_a100_mlp.csv", "a100_dgx_all_reduce.csv",
                            "a100_dgx_send_recv.csv", "README.md", "LICENSE"}
    for name, digest in digests.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["gpu"] == "a100-80gb" and "MIT" in manifest["licence"]


def test_a_changed_file_fails_the_checksum(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    shutil.copytree(builtin_profile_dir("vidur-a100"), folder)
    with (folder / "a100_dgx_send_recv.csv").open("a") as handle:
        handle.write("\n")
    with pytest.raises(DopdError, match="sha256"):
        verify_manifest(folder)


def test_profile_tables() -> None:
    prof = load_profile("vidur-a100")
    assert prof.tp_degrees == (1, 2, 4, 8) and prof.shape == (4096, 14336, 32, 8, 128256)
    tokens, ms = prof.layer_ms[1]
    assert tokens[0] == 1 and tokens[-1] == 32768 and list(tokens) == sorted(set(tokens))
    # one layer of Llama-3-8B at 8192 tokens on one A100: ~16.8 ms in Vidur's measurements
    assert ms[tokens.index(8192)] == pytest.approx(16.8, rel=0.02)
    spec = get_model("llama-3-8b")
    t = np.array([1.0, 512.0, 8192.0, 40000.0])
    one, two = prof.nonattention_ms(spec, 1, t), prof.nonattention_ms(spec, 2, t)
    assert np.all(np.diff(one) > 0) and np.all(two > prof.allreduce_step_ms(spec, 2, t))
    assert np.all(prof.allreduce_step_ms(spec, 1, t) == 0)


def test_profile_model_is_affine_in_decode_context_and_monotone() -> None:
    m = ProfileLatencyModel("llama-3-8b", "a100-80gb", 2)
    alpha, slope = m.decode_coefficients(16)
    for ctx_sum in (0, 1000, 50_000):
        assert m.step_time(0, 0, 0, 16, ctx_sum) == pytest.approx(alpha + slope * ctx_sum)
    times = [m.step_time(n, n * n, 1, 8, 8000) for n in (1, 64, 512, 4096, 32768, 40000)]
    assert times == sorted(times) and times[-1] > times[-2]
    assert m.step_time(0, 0, 0, 0, 0) == 0.0
    batch = BatchShape(prefill=((512, 128),), decode=(300,) * 8)
    b = m.breakdown(batch)
    assert b.step_ms == pytest.approx(m.step_time_for(batch) * 1e3)
    assert b.allreduce_ms > 0 and b.bound == "profiled"
    assert b.step_ms == pytest.approx(b.gemm_ms + b.attention_ms + b.allreduce_ms + b.overhead_ms)


def test_profile_model_through_the_factory_and_its_errors(tmp_path: Path) -> None:
    model = build_latency_model("llama-3-8b", "a100-80gb", 4, profile="vidur-a100")
    assert isinstance(model, ProfileLatencyModel) and model.kv_capacity_tokens
    folder = tmp_path / "mine"
    shutil.copytree(builtin_profile_dir("vidur-a100"), folder)
    (folder / "manifest.json").unlink()
    mine = build_latency_model("llama-3-8b", "h100", 1, profile=str(folder))
    assert mine.step_time(512, 512 * 512, 1, 0, 0) > 0  # no manifest: the GPU is not checked
    with pytest.raises(DopdError, match="TP degrees 1, 2, 4, 8, not 3"):
        load_profile("vidur-a100").check_tp(3)
    with pytest.raises(DopdError, match="not both"):
        build_latency_model("llama-3-8b", "a100-80gb", 1, calibration="x.json",
                            profile="vidur-a100")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DopdError, match="expected one"):
        build_latency_model("llama-3-8b", "a100-80gb", 1, profile=str(empty))


def test_profile_model_meets_the_definition_of_done_on_held_out_points() -> None:
    report = profile_model_fidelity()
    print(f"profile model: median {100 * report.median:.2f} %, worst {100 * report.worst:.1f} %")
    assert report.median <= 0.05 and report.worst <= 0.15
    assert sum(r.points for r in report.rows) == 900


def test_the_held_out_check_can_fail() -> None:
    prof = load_profile("vidur-a100")
    coarse = dataclasses.replace(prof, layer_ms={tp: (t[0][::64], t[1][::64])
                                                 for tp, t in prof.layer_ms.items()})
    assert profile_model_fidelity(coarse).worst > 0.15  # far too few points to interpolate
    half = fit_half(prof)
    assert len(half.layer_ms[1][0]) == (len(prof.layer_ms[1][0]) + 1) // 2
    spec = get_model("llama-3-8b")
    points = profile_points(prof, spec)
    assert sum(p.held_out for p in points) == 900 and len(points) == 4 * 451


def test_modern_fit_preset_is_the_fit_to_the_profiles() -> None:
    fit = fit_preset("vidur-a100", "modern")
    shipped = get_preset("modern-fit")
    for name in FITTED_FIELDS:
        got, want = getattr(fit.preset, name), getattr(shipped, name)
        assert got == pytest.approx(want, rel=0.05, abs=2e-7), name
    assert fit.fit_median <= 0.03 and fit.check_median <= 0.03
    report = preset_profile_fidelity("modern-fit")
    assert report.median <= 0.05 and report.worst <= 0.40
    # modern's estimates are 16-33 % too fast; the check sees it
    assert preset_profile_fidelity("modern").median > 0.10
