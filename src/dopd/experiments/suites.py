"""The built-in suites: ``paper`` (the paper's comparison), ``quick`` (minutes) and ``smoke``
(seconds, for tests). Suites are data; :data:`SUITES` maps names to factories.

SLOs. TPOT targets are DistServe's published examples (anchors file ``slo_examples``): 0.1 s for
chatbot workloads (Azure conversation, ShareGPT, Mooncake conversation; Mooncake's own TBT
threshold is 0.1 s too) and 0.2 s for code completion (Azure code). DistServe's TTFT examples
(0.125-0.4 s) were set for short prompts on OPT with a 2023 engine; on these traces they sit below
the unloaded prefill time of the longest prompts (up to 5% of Azure conversation prompts need
more than 0.24 s alone on Llama-3-8B / A100), which would cap attainment below the 99% target at
any load. So TTFT targets are about twice the unloaded prefill time of the workload's P99
prompt on one instance, rounded: 0.5 s (prompts clipped to 4k), 1 s (8k), 20-30 s for Mooncake's
long contexts (30 s is Mooncake's own TTFT threshold). Attainment target 90% (DistServe).

Loads. ``scale`` puts load 1.0 a little above the baselines' capacity as measured with the
latency model's ``modern`` preset, so the bisection's first bracket [0.5, 1.0] usually holds the
answer; windows are 5 minutes of arrivals.
"""

from __future__ import annotations

from collections.abc import Callable

from dopd.errors import require
from dopd.experiments.suite import Scenario, Source, Suite, SyntheticSource, TraceSource
from dopd.registry import Registry
from dopd.sim.api import SimConfig
from dopd.sim.run_config import GoodputSearch
from dopd.types import SLO

AZURE_CONV = TraceSource("azure-conv")
AZURE_CODE = TraceSource("azure-code")
MOONCAKE = TraceSource("mooncake")
SHAREGPT = "sharegpt"


def sharegpt_bursty(mean_rate: float) -> SyntheticSource:
    """ShareGPT lengths with on/off bursts (20 s at 2x the mean rate, 40 s at 0.5x, on
    average) and a length-mix shift from the decode-heavy half of the table to the
    prefill-heavy half (30-40% of the window) and back (65-75%)."""
    on, off = 2.0 * mean_rate, 0.5 * mean_rate
    return SyntheticSource(
        arrival=f"onoff:rate_on={on:g},rate_off={off:g},mean_on_s=20,mean_off_s=40",
        lengths=SHAREGPT, shift="split")


CHAT_TPOT = "TPOT: DistServe chatbot example (0.1 s)"
CODE_TPOT = "TPOT: DistServe code-completion example (0.2 s)"


def _slo(ttft: float, tpot: float) -> SLO:
    return SLO(ttft_s=ttft, tpot_s=tpot, attainment=0.9)


def _a100_8b(instances: int, model: str = "llama-3-8b") -> SimConfig:
    return SimConfig(model=model, gpu="a100-80gb", tp=1, instances=instances)


def _h100_70b(instances: int, model: str = "llama-2-70b") -> SimConfig:
    return SimConfig(model=model, gpu="h100-sxm", tp=4, instances=instances)


def _scenario(name: str, title: str, source: Source, cluster: SimConfig, slo: SLO, note: str,
              scale: float, max_context: int | None, duration_s: float = 300.0) -> Scenario:
    return Scenario(name=name, title=title, source=source, cluster=cluster, slo=slo,
                    slo_source=note, duration_s=duration_s, scale=scale,
                    max_context=max_context)


def paper() -> Suite:
    """The issue's comparison: 4 workloads x {Llama-3-8B on 8 x A100-80GB, Llama-2-70B at TP4
    on 6 x 4 H100} (Mooncake on the 128k-context Llama-3.1 models of the same shapes), all of
    colocated, static:best, reactive, sla-planner and dopd, plus dopd's ablations and
    ``nohybrid`` (the P/D split alone, without the all-mixed mode that is dopd's default)."""
    a8, h70 = _a100_8b(8), _h100_70b(6)
    scenarios = (
        _scenario("conv-8b", "Azure conversation, Llama-3-8B, 8 x A100-80GB", AZURE_CONV, a8,
                  _slo(0.5, 0.1), f"TTFT 2x P99-prompt prefill; {CHAT_TPOT}", 12.0, 8192),
        _scenario("code-8b", "Azure code, Llama-3-8B, 8 x A100-80GB", AZURE_CODE, a8,
                  _slo(1.0, 0.2), f"TTFT 2x P99-prompt prefill; {CODE_TPOT}", 3.0, 8192),
        _scenario("mooncake-8b", "Mooncake conversation, Llama-3.1-8B (128k), 8 x A100-80GB",
                  MOONCAKE, _a100_8b(8, "llama-3.1-8b"), _slo(30.0, 0.1),
                  f"TTFT: Mooncake's 30 s threshold (2x P99-prompt prefill); {CHAT_TPOT}",
                  1.25, 131072),
        _scenario("sharegpt-8b", "ShareGPT lengths, bursty on/off arrivals with a length-mix "
                  "shift, Llama-3-8B, 8 x A100-80GB", sharegpt_bursty(20.0), a8,
                  _slo(1.0, 0.1), f"TTFT 2x P99-prompt prefill; {CHAT_TPOT}", 1.0, 8192),
        _scenario("conv-70b", "Azure conversation, Llama-2-70B TP4, 6 x 4 H100", AZURE_CONV,
                  h70, _slo(0.5, 0.1), f"TTFT 2x P99-prompt prefill; {CHAT_TPOT}", 10.0, 4096),
        _scenario("code-70b", "Azure code, Llama-2-70B TP4, 6 x 4 H100", AZURE_CODE, h70,
                  _slo(0.5, 0.2), f"TTFT 2x P99-prompt prefill; {CODE_TPOT}", 2.5, 4096),
        _scenario("mooncake-70b", "Mooncake conversation, Llama-3.1-70B (128k) TP4, "
                  "6 x 4 H100", MOONCAKE, _h100_70b(6, "llama-3.1-70b"), _slo(20.0, 0.1),
                  f"TTFT 2x P99-prompt prefill; {CHAT_TPOT}", 1.25, 131072),
        _scenario("sharegpt-70b", "ShareGPT lengths, bursty on/off arrivals with a length-mix "
                  "shift, Llama-2-70B TP4, 6 x 4 H100", sharegpt_bursty(20.0), h70,
                  _slo(0.5, 0.1), f"TTFT 2x P99-prompt prefill; {CHAT_TPOT}", 1.0, 4096),
    )
    return Suite(
        name="paper", description=paper.__doc__ or "", scenarios=scenarios,
        ablations=("dopd:noforecast", "dopd:nolength", "dopd:novariance", "dopd:nohybrid"),
        search=GoodputSearch(enabled=True, lo=0.5, hi=1.0, rel_tol=0.05, max_runs=10),
        timeline_scenario="sharegpt-8b",
    )


def quick() -> Suite:
    """Two 8B scenarios (Azure conversation; bursty ShareGPT with a mix shift) on 4 x
    A100-80GB, 2-minute windows and a coarser search: the baselines, the competitors and
    dopd (no ablations; ``paper`` has them) in a couple of minutes."""
    a8 = _a100_8b(4)
    scenarios = (
        _scenario("conv-8b", "Azure conversation, Llama-3-8B, 4 x A100-80GB", AZURE_CONV, a8,
                  _slo(0.5, 0.1), f"TTFT 2x P99-prompt prefill; {CHAT_TPOT}", 6.0, 8192,
                  duration_s=120.0),
        _scenario("sharegpt-8b", "ShareGPT lengths, bursty on/off arrivals with a length-mix "
                  "shift, Llama-3-8B, 4 x A100-80GB", sharegpt_bursty(10.0), a8,
                  _slo(1.0, 0.1), f"TTFT 2x P99-prompt prefill; {CHAT_TPOT}", 1.0, 8192,
                  duration_s=120.0),
    )
    return Suite(
        name="quick", description=quick.__doc__ or "", scenarios=scenarios, ablations=(),
        search=GoodputSearch(enabled=True, lo=0.5, hi=1.0, rel_tol=0.1, max_runs=8),
        timeline_scenario="sharegpt-8b",
    )


def smoke() -> Suite:
    """Seconds: a 20 s cut of the Azure conversation trace and a synthetic lognormal workload
    with a length-mix shift, both on 3 x A100-80GB with Llama-3-8B."""
    a8 = _a100_8b(3)
    shift = SyntheticSource(
        arrival="poisson:rate=16",
        lengths="lognormal:prompt_mean=600,prompt_cv=0.8,output_mean=150,output_cv=0.8",
        shift="lognormal:prompt_mean=2000,prompt_cv=0.5,output_mean=40,output_cv=0.8")
    scenarios = (
        _scenario("conv-8b", "Azure conversation (20 s), Llama-3-8B, 3 x A100-80GB",
                  AZURE_CONV, a8, _slo(0.5, 0.1), CHAT_TPOT, 6.0, 8192, duration_s=20.0),
        _scenario("shift-8b", "Poisson arrivals, lognormal lengths with a mix shift, "
                  "Llama-3-8B, 3 x A100-80GB", shift, a8, _slo(1.0, 0.1), CHAT_TPOT, 1.0, 8192,
                  duration_s=20.0),
    )
    return Suite(
        name="smoke", description=smoke.__doc__ or "", scenarios=scenarios,
        search=GoodputSearch(enabled=True, lo=0.5, hi=1.0, rel_tol=0.3, max_runs=4),
        timeline_scenario="shift-8b",
    )


SUITES: Registry[Callable[[], Suite]] = Registry("experiment suite")
SUITES.register("paper", paper)
SUITES.register("quick", quick)
SUITES.register("smoke", smoke)


def get_suite(name: str) -> Suite:
    """The built-in suite called ``name``; DopdError listing the known ones otherwise."""
    require(isinstance(name, str) and name.strip() != "", "empty suite name")
    return SUITES.get(name)()
