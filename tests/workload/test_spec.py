"""Spec strings for arrival processes and length samplers."""

from __future__ import annotations

import numpy as np
import pytest

from dopd.errors import DopdError
from dopd.workload import (
    ClipContext,
    Diurnal,
    Fixed,
    Gamma,
    LogNormal,
    OnOff,
    StepRate,
    load_workload,
    make_arrival,
    parse_arrival,
    parse_lengths,
)
from dopd.workload.spec import split_spec


def test_split_spec() -> None:
    assert split_spec(" gamma : rate=20 , cv=3 ") == ("gamma", {"rate": "20", "cv": "3"})
    assert split_spec("poisson") == ("poisson", {})
    with pytest.raises(DopdError, match="KEY=VALUE"):
        split_spec("gamma:rate")
    with pytest.raises(DopdError, match="twice"):
        split_spec("gamma:rate=1,rate=2")


def test_parse_arrival_kinds() -> None:
    assert parse_arrival("gamma:rate=20,cv=3") == Gamma(20.0, 3.0)
    assert parse_arrival("GAMMA:rate=20,cv=3") == Gamma(20.0, 3.0)
    assert parse_arrival("onoff:rate_on=40,rate_off=0,mean_on_s=1,mean_off_s=2,start_on=false") \
        == OnOff(40.0, 0.0, 1.0, 2.0, start_on=False)
    assert parse_arrival("step:times=0/60/120,rates=10/20/5") == StepRate(
        (0.0, 60.0, 120.0), (10.0, 20.0, 5.0))
    assert parse_arrival("diurnal:rate=10,amplitude=0.5,period_s=600") == Diurnal(10, 0.5, 600)
    assert make_arrival("poisson", rate=3).expected_count(2.0) == 6.0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("zipf:rate=1", "unknown arrival process 'zipf'"),
        ("gamma:rate=20", "needs cv"),
        ("gamma:rate=20,cv=3,burst=2", "no parameter 'burst'"),
        ("poisson:rate=fast", "bad value 'fast'"),
        ("poisson:rate=-1", "rate must be > 0"),
        ("onoff:rate_on=1,rate_off=1,mean_on_s=1,mean_off_s=1,start_on=maybe", "bad value"),
        ("", "empty spec"),
    ],
)
def test_parse_arrival_errors(spec: str, message: str) -> None:
    with pytest.raises(DopdError, match=message):
        parse_arrival(spec)


def test_parse_lengths() -> None:
    assert parse_lengths("fixed:prompt=512,output=128") == Fixed(512, 128)
    sampler = parse_lengths("lognormal:prompt_mean=1000,prompt_cv=1,output_mean=200,output_cv=1,"
                            "max_context=4096,clip=reject")
    assert sampler == ClipContext(LogNormal(1000, 1, 200, 1), 4096, "reject")
    with pytest.raises(DopdError, match="fixed lengths must be >= 1"):
        parse_lengths("fixed:prompt=0,output=1")
    with pytest.raises(DopdError, match=r"bad value '1\.5'"):
        parse_lengths("fixed:prompt=1.5,output=1")
    with pytest.raises(DopdError, match="max_context"):
        parse_lengths("fixed:prompt=1,output=1,max_context=big")
    with pytest.raises(DopdError, match="not found"):
        parse_lengths("empirical:path=/nonexistent/x.csv")


def test_trace_backed_specs() -> None:
    azure = "azure-code"
    replay = parse_arrival(f"replay:path={azure},scale=2")
    times = replay.sample(np.random.default_rng(), duration_s=60.0)
    np.testing.assert_allclose(times, load_workload(azure).cut(duration_s=120.0).arrival_s / 2)
    sharegpt = "sharegpt"
    sampler = parse_lengths(f"empirical:path={sharegpt},max_context=4096")
    prompt, output = sampler.sample(np.random.default_rng(1), 5000)
    assert (prompt + output).max() <= 4096 and prompt.mean() > 1000
