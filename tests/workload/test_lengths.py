"""Length samplers: exact cases, moments against theory, clipping and mix shifts."""

from __future__ import annotations

import numpy as np
import pytest

from dopd.errors import DopdError
from dopd.workload import (
    ClipContext,
    Empirical,
    Fixed,
    LengthTable,
    LogNormal,
    MixShift,
    Uniform,
    Workload,
    load_lengths,
    parse_lengths,
)

SHAREGPT = "sharegpt"


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_fixed_and_uniform() -> None:
    prompt, output = Fixed(512, 128).sample(rng(), 4)
    assert prompt.tolist() == [512] * 4 and output.tolist() == [128] * 4
    assert prompt.dtype == np.int64
    prompt, output = Uniform(10, 12, 1, 1).sample(rng(), 3000)
    assert set(prompt.tolist()) == {10, 11, 12} and set(output.tolist()) == {1}
    assert np.bincount(prompt)[10:].min() > 900
    with pytest.raises(DopdError):
        Uniform(5, 4, 1, 1)
    with pytest.raises(DopdError):
        Fixed(0, 1)


def test_lognormal_mean_cv_and_correlation() -> None:
    sampler = LogNormal(1000.0, 1.5, 200.0, 0.5, rho=0.8)
    prompt, output = sampler.sample(rng(1), 200_000)
    assert prompt.mean() == pytest.approx(1000, rel=0.03)
    assert prompt.std() / prompt.mean() == pytest.approx(1.5, rel=0.06)
    assert output.mean() == pytest.approx(200, rel=0.01)
    assert output.std() / output.mean() == pytest.approx(0.5, rel=0.03)
    assert np.corrcoef(np.log(prompt), np.log(output))[0, 1] == pytest.approx(0.8, abs=0.02)
    flat, _ = LogNormal(3.0, 0.0, 1.0, 0.0).sample(rng(), 10)
    assert flat.tolist() == [3] * 10


def test_empirical_resamples_pairs_jointly() -> None:
    table = LengthTable("t", [10, 20, 30], [1, 2, 3])
    prompt, output = Empirical(table).sample(rng(2), 3000)
    np.testing.assert_array_equal(output * 10, prompt)  # pairs are never mixed
    assert set(prompt.tolist()) == {10, 20, 30}
    w = Workload("w", [0.0, 1.0], [7, 9], [70, 90])
    prompt, output = Empirical.of(w).sample(rng(), 50)
    np.testing.assert_array_equal(output, prompt * 10)


def test_empirical_sharegpt_reproduces_moments() -> None:
    table = load_lengths(SHAREGPT)
    prompt, output = Empirical(table).sample(rng(3), 100_000)
    m = table.length_moments()
    assert prompt.mean() == pytest.approx(m.prompt_mean, rel=0.02)
    assert output.mean() == pytest.approx(m.output_mean, rel=0.02)


def test_clip_context_truncate_and_reject() -> None:
    base = Uniform(1, 4000, 1, 2000)
    prompt, output = ClipContext(base, 2048).sample(rng(4), 20_000)
    assert (prompt + output).max() <= 2048 and prompt.min() >= 1 and output.min() >= 1
    assert (prompt == 2047).sum() > 1000  # truncated, not redrawn
    prompt, output = ClipContext(base, 2048, "reject").sample(rng(4), 20_000)
    assert (prompt + output).max() <= 2048
    assert (prompt == 2047).sum() < 10  # redrawn: no pile-up at the cap
    with pytest.raises(DopdError, match="rejects almost every"):
        ClipContext(Fixed(100, 100), 50, "reject").sample(rng(), 5)
    with pytest.raises(DopdError, match="clip mode"):
        ClipContext(base, 100, "drop")


def test_mix_shift_step_and_linear() -> None:
    short, long = Fixed(100, 10), Fixed(5000, 10)
    times = np.linspace(0.0, 100.0, 10_001)
    prompt, _ = MixShift(short, long, 50.0).sample(rng(5), times.size, times)
    np.testing.assert_array_equal(prompt, np.where(times >= 50.0, 5000, 100))
    ramp = MixShift(short, long, 20.0, 80.0)
    prompt, _ = ramp.sample(rng(6), times.size, times)
    for lo, hi, share in ((0, 20, 0.0), (45, 55, 0.5), (80, 100, 1.0)):
        window = (times >= lo) & (times < hi)
        assert (prompt[window] == 5000).mean() == pytest.approx(share, abs=0.05)
    with pytest.raises(DopdError, match="arrival times"):
        ramp.sample(rng(), 3)
    with pytest.raises(DopdError, match="end after start"):
        MixShift(short, long, 10.0, 5.0)


def test_same_seed_same_draws() -> None:
    sampler = MixShift(LogNormal(800, 1, 100, 1), Uniform(1, 9, 1, 9), 5.0, 6.0)
    times = np.linspace(0, 10, 500)
    a = sampler.sample(rng(9), 500, times)
    b = sampler.sample(rng(9), 500, times)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_bimodal_mixes_chat_and_documents() -> None:
    sampler = parse_lengths("bimodal:chat_prompt=500,chat_output=200,doc_prompt=10000,"
                            "doc_output=50,doc_share=0.25,cv=0.3")
    prompt, output = sampler.sample(np.random.default_rng(0), 20_000)
    docs = prompt > 3000
    assert abs(docs.mean() - 0.25) < 0.02
    assert abs(prompt[docs].mean() / 10_000 - 1) < 0.05
    assert abs(output[~docs].mean() / 200 - 1) < 0.05
    with pytest.raises(DopdError):
        parse_lengths("bimodal:chat_prompt=500,chat_output=200,doc_prompt=10000,"
                      "doc_output=50,doc_share=1.5")
