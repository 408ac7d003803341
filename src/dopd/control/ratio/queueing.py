"""Multi-server queue approximations used by the prefill side of the P/D solver.

All functions are vectorised: ``servers`` and the load arguments broadcast as numpy arrays, so
the solver evaluates every candidate prefill count in one call.

Model: arrivals at rate ``lam`` with squared coefficient of variation ``scv_a`` of the gaps
(1 for Poisson) to ``k`` identical FCFS servers with mean service time ``mean_s`` and squared
coefficient of variation ``scv_s``. The probability of waiting is the Erlang-C formula of the
M/M/k queue with the same load; the mean wait is the Allen-Cunneen approximation
``E[Wq] = C(k, a) / (k mu - lam) * (scv_a + scv_s) / 2``, exact for M/M/k and for M/G/1
(Pollaczek-Khinchine). The wait of a delayed request is taken as exponential with the mean that
matches ``E[Wq]``: ``P(Wq > t) = C exp(-t / m)``, ``m = E[Wq] / C``, exact for M/M/k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special

from dopd.errors import require

FloatArray = npt.NDArray[np.float64]


def erlang_b(servers: npt.ArrayLike, offered: npt.ArrayLike) -> FloatArray:
    """Erlang-B blocking probability of ``servers`` servers (int >= 1) at ``offered`` Erlangs.

    Computed as the Poisson ratio pmf(k; a) / cdf(k; a), stable for large k and a.
    """
    k = np.asarray(servers, dtype=np.float64)
    a = np.asarray(offered, dtype=np.float64)
    require(bool(np.all(k >= 1)), "Erlang B needs at least one server")
    require(bool(np.all(a >= 0)), "offered load must be >= 0")
    with np.errstate(divide="ignore"):
        log_pmf = special.xlogy(k, a) - a - special.gammaln(k + 1.0)
    cdf = special.gammaincc(k + 1.0, a)
    out = np.where(a > 0, np.exp(log_pmf) / np.maximum(cdf, 1e-300), 0.0)
    return np.clip(out, 0.0, 1.0)


def erlang_c(servers: npt.ArrayLike, offered: npt.ArrayLike) -> FloatArray:
    """Erlang-C probability that an arrival waits in an M/M/k queue at ``offered`` = lam/mu.

    1.0 where the queue is unstable (``offered >= servers``).
    """
    k = np.asarray(servers, dtype=np.float64)
    a = np.asarray(offered, dtype=np.float64)
    b = erlang_b(k, np.minimum(a, k))
    rho = a / k
    with np.errstate(divide="ignore", invalid="ignore"):
        c = b / (1.0 - rho * (1.0 - b))
    return np.where(rho >= 1.0, 1.0, np.clip(c, 0.0, 1.0))


@dataclass(frozen=True, slots=True)
class WaitDistribution:
    """Queueing delay ``Wq``: ``P(Wq > t) = p_wait * exp(-t / cond_mean)`` (arrays, broadcast).

    ``utilisation`` is lam * mean_s / k; where it is >= 1 the queue is unstable and
    ``p_wait = 1``, ``cond_mean = inf``.
    """

    p_wait: FloatArray
    cond_mean: FloatArray
    utilisation: FloatArray

    @property
    def mean(self) -> FloatArray:
        """E[Wq] (inf where unstable)."""
        return self.p_wait * self.cond_mean

    def survival(self, t: npt.ArrayLike) -> FloatArray:
        """P(Wq > t) (1 for t < 0). ``t``'s leading axes align with the distribution's shape;
        extra trailing axes of ``t`` broadcast (e.g. (K,) waits against (K, L) times)."""
        t_arr = np.asarray(t, dtype=np.float64)
        extra = (1,) * max(t_arr.ndim - self.p_wait.ndim, 0)
        pw = self.p_wait.reshape(self.p_wait.shape + extra)
        cm = self.cond_mean.reshape(self.cond_mean.shape + extra)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            tail = pw * np.exp(-np.maximum(t_arr, 0.0) / cm)
        tail = np.where(np.isinf(cm), 1.0, tail)
        tail = np.where(pw <= 0.0, 0.0, tail)
        return np.where(t_arr < 0, 1.0, tail)

    def quantile(self, q: float) -> FloatArray:
        """The ``q``-quantile of Wq: 0 when ``p_wait <= 1 - q``, inf where unstable."""
        require(0.0 < q < 1.0, f"quantile level must be in (0, 1), got {q}")
        with np.errstate(divide="ignore", invalid="ignore"):
            t = self.cond_mean * np.log(self.p_wait / (1.0 - q))
        return np.where(self.p_wait <= 1.0 - q, 0.0, t)


def mgk_wait(
    servers: npt.ArrayLike,
    lam: npt.ArrayLike,
    mean_s: npt.ArrayLike,
    scv_s: npt.ArrayLike,
    scv_a: npt.ArrayLike = 1.0,
) -> WaitDistribution:
    """Queueing delay of a GI/G/k FCFS queue by Erlang C with the Allen-Cunneen correction.

    ``servers`` >= 1, ``lam`` >= 0 (req/s), ``mean_s`` > 0 (s), ``scv_s`` and ``scv_a`` >= 0.
    """
    k = np.asarray(servers, dtype=np.float64)
    lam_a = np.asarray(lam, dtype=np.float64)
    s = np.asarray(mean_s, dtype=np.float64)
    require(bool(np.all(s > 0)), "mean service time must be > 0")
    require(bool(np.all(lam_a >= 0)), "arrival rate must be >= 0")
    cs = np.asarray(scv_s, dtype=np.float64)
    ca = np.asarray(scv_a, dtype=np.float64)
    require(bool(np.all(cs >= 0)) and bool(np.all(ca >= 0)), "squared CVs must be >= 0")
    offered = lam_a * s
    rho = offered / k
    p_wait = erlang_c(k, offered)
    slack = k / s - lam_a
    with np.errstate(divide="ignore", invalid="ignore"):
        cond = np.where(slack > 0, 0.5 * (ca + cs) / slack, np.inf)
    cond = np.where(rho >= 1.0, np.inf, cond)
    # A zero-variance deterministic D/D/k queue below capacity never waits.
    p_wait = np.where((ca + cs == 0) & (rho < 1.0), 0.0, p_wait)
    cond = np.where(p_wait == 0, 0.0, cond)
    shape = np.broadcast_shapes(k.shape, lam_a.shape, s.shape, cs.shape, ca.shape)
    return WaitDistribution(
        np.broadcast_to(p_wait, shape).astype(np.float64),
        np.broadcast_to(cond, shape).astype(np.float64),
        np.broadcast_to(rho, shape).astype(np.float64),
    )
