"""Queue formulas against textbook values, exact results and a simulated queue."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dopd.control.ratio.queueing import erlang_b, erlang_c, mgk_wait
from dopd.errors import DopdError


def _erlang_c_direct(k: int, a: float) -> float:
    """Textbook Erlang C: (a^k/k! * k/(k-a)) / (sum_{i<k} a^i/i! + a^k/k! * k/(k-a))."""
    top = a**k / math.factorial(k) * k / (k - a)
    return top / (sum(a**i / math.factorial(i) for i in range(k)) + top)


@pytest.mark.parametrize(("k", "a", "expected"), [
    (1, 0.5, 0.5),                 # M/M/1: P(wait) = rho
    (2, 1.0, 1 / 3),               # M/M/2 at rho 0.5: 2 rho^2 / (1 + rho)
    (10, 8.0, 0.409),              # call-centre table value (10 agents, 8 Erlangs)
    (5, 4.0, 0.554),               # table value (5 servers, 4 Erlangs)
])
def test_erlang_c_table_values(k: int, a: float, expected: float) -> None:
    assert erlang_c(k, a)[()] == pytest.approx(expected, abs=2e-3)


def test_erlang_c_matches_direct_formula_and_vectorises() -> None:
    ks = np.array([1, 2, 3, 7, 20, 64])
    loads = ks * 0.83
    got = erlang_c(ks, loads)
    want = [_erlang_c_direct(int(k), float(a)) for k, a in zip(ks, loads, strict=True)]
    assert got == pytest.approx(want, rel=1e-9)


def test_erlang_b_known_value_and_limits() -> None:
    # Erlang B for 2 servers at 1 Erlang: (1/2) / (1 + 1 + 1/2) = 0.2.
    assert erlang_b(2, 1.0)[()] == pytest.approx(0.2)
    assert erlang_b(3, 0.0)[()] == 0.0
    # Large systems stay finite and within (0, 1).
    big = erlang_b(500, 480.0)[()]
    assert 0.0 < big < 1.0


def test_unstable_queue_always_waits() -> None:
    assert erlang_c(2, 2.0)[()] == 1.0
    wait = mgk_wait(2, lam=3.0, mean_s=1.0, scv_s=1.0)
    assert math.isinf(float(wait.mean[()]))
    assert math.isinf(float(wait.quantile(0.9)[()]))


def test_mm1_wait_distribution_is_exact() -> None:
    lam, mu = 0.8, 1.0
    wait = mgk_wait(1, lam, 1 / mu, scv_s=1.0)
    rho = lam / mu
    # P(Wq > t) = rho exp(-(mu - lam) t); P90 = ln(10 rho) / (mu - lam).
    assert wait.quantile(0.9)[()] == pytest.approx(math.log(10 * rho) / (mu - lam))
    assert wait.survival(2.0)[()] == pytest.approx(rho * math.exp(-(mu - lam) * 2.0))
    assert wait.mean[()] == pytest.approx(rho / (mu - lam))


def test_mmk_mean_wait_is_exact() -> None:
    k, lam, s = 3, 2.4, 1.0
    wait = mgk_wait(k, lam, s, scv_s=1.0)
    c = _erlang_c_direct(k, lam * s)
    assert wait.mean[()] == pytest.approx(c / (k / s - lam))


def test_md1_matches_pollaczek_khinchine() -> None:
    lam, s = 0.7, 1.0
    rho = lam * s
    wait = mgk_wait(1, lam, s, scv_s=0.0)
    assert wait.mean[()] == pytest.approx(rho * s / (2 * (1 - rho)))


def test_quantile_is_zero_when_few_wait() -> None:
    wait = mgk_wait(4, 0.5, 1.0, scv_s=1.0)
    assert wait.quantile(0.9)[()] == 0.0


def test_burstier_arrivals_wait_longer() -> None:
    calm = mgk_wait(2, 1.5, 1.0, 1.0, scv_a=1.0).mean[()]
    bursty = mgk_wait(2, 1.5, 1.0, 1.0, scv_a=4.0).mean[()]
    assert bursty == pytest.approx(calm * 2.5)


def _simulate_mgk_mean_wait(k: int, lam: float, service: np.ndarray, seed: int) -> float:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / lam, service.size))
    free = np.zeros(k)
    waits = np.empty(service.size)
    for i, (t, s) in enumerate(zip(arrivals, service, strict=True)):
        j = int(np.argmin(free))
        start = max(t, free[j])
        waits[i] = start - t
        free[j] = start + s
    return float(waits[service.size // 10:].mean())


def test_allen_cunneen_close_to_simulated_mg2() -> None:
    rng = np.random.default_rng(7)
    service = rng.lognormal(0.0, 1.0, 60_000)
    service /= service.mean()
    scv = float(service.var())
    lam = 1.6  # rho = 0.8 on two servers
    simulated = _simulate_mgk_mean_wait(2, lam, service, seed=3)
    predicted = float(mgk_wait(2, lam, 1.0, scv).mean[()])
    assert predicted == pytest.approx(simulated, rel=0.2)


def test_bad_input_raises() -> None:
    with pytest.raises(DopdError):
        erlang_b(0, 1.0)
    with pytest.raises(DopdError):
        mgk_wait(1, 1.0, 0.0, 1.0)
    with pytest.raises(DopdError):
        mgk_wait(1, -1.0, 1.0, 1.0)
    with pytest.raises(DopdError):
        mgk_wait(1, 0.5, 1.0, 1.0).quantile(1.0)
