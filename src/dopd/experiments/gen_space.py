"""The scenario space of ``dopd experiment generalize``: workloads dopd was never tuned on.

:func:`draw_scenarios` draws ``n`` scenarios from ``seed`` (scenario ``i`` depends only on
``(seed, i)``). Each scenario draws, independently:

- **workload family** (weights): ``trace`` 0.3 — a window of a shipped trace (``azure-conv``,
  ``azure-code``, ``mooncake``) at a random offset into its hour, time-compressed (see *load
  axis*); ``lognormal`` 0.25 — prompt mean log-uniform in 64-32k tokens, CV 0.3-3, output mean
  log-uniform in 4-2k, CV 0.3-2; ``bimodal`` 0.2 — chat (prompts 300-2k, outputs 50-500) mixed
  with documents (prompts 4k-24k, outputs 8-300), document share 0.1-0.6; ``beyond-context``
  0.1 — lognormal prompts with mean 0.3-0.8 x the model's context window and CV 1-2, so a tail
  lies beyond the window and is truncated as a front end truncates history (``max_context``);
  ``sharegpt`` 0.15 — the ShareGPT length table, resampled.
- **arrivals** (synthetic families): Poisson, Gamma with CV 1-4, on/off (on at 1.5-3x the
  mean rate for 10-60 s, off at 0-0.5x), diurnal (amplitude 0.3-0.9, one period per window),
  each with probability 1/4; a trace keeps its own arrivals.
- **non-stationarity** (synthetic families, probability 0.4, half each): ``rate`` — the arrival
  rate steps through 0.5x / 1.6x / 0.9x of the mean in thirds of the window (Poisson);
  ``mix`` — the length mix ramps to a prefill-heavy (prompts x4, outputs / 4) or decode-heavy
  (prompts / 4, outputs x4) variant over 30-40 % of the window and back over 65-75 %.
- **model and GPU** (weights): 8B 0.5 (Llama-3-8B or, for long-context workloads,
  Llama-3.1-8B, on A100-80GB, H100 or L40S, TP1), 30B-class 0.25 (Qwen2.5-32B at TP2 on
  A100-80GB or H100), 70B-class 0.25 (Llama-3.1-70B or Qwen2.5-72B at TP4 on H100 or A100-80GB);
  instance budget from 4, 6, 8, 12, 16, 24, 32 (weights favour 4-16).
- **SLO regime**, uniform: ``ttft-tight`` (TTFT 1.5 x / TPOT 4 x), ``balanced`` (3 x / 2.5 x),
  ``tpot-tight`` (6 x / 1.5 x), in units of the scenario's own unloaded times: the prefill of
  its P95 prompt alone on one instance, and a decode step of a batch of 16 at the mean
  context (floors: TTFT 0.1 s, TPOT 10 ms). On an idle instance at least 95 % of the
  requests meet the TTFT target, so the 90 % attainment target is attainable at light load.

**Load axis.** Load 1 is the scenario's nominal rate: an estimate of the pool's capacity
(:func:`nominal_rate`: every instance serving the mean request alone, prefill then decode in a
batch of 64) times a drawn factor in 0.5-2, so a search's scan (0.125-4x, extended up to
29x while the target is still met) brackets every policy's max goodput. The window lasts
``requests / nominal rate`` seconds (5-900 s), so load 1 holds about ``requests`` requests
(default 400; the experiment's run time scales with it).

:data:`NAMED` holds fixed scenarios selectable by name, among them the two cases of the honest
claim (issue 11): ``long-context`` and the ``summarize-*`` family.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dopd.control.cluster_models import build_models
from dopd.data import TRACES_DIR
from dopd.errors import require
from dopd.experiments.sources import _trace, resolve, synthetic_lengths
from dopd.experiments.suite import Scenario, Source, SyntheticSource, TraceSource
from dopd.perf.model_catalog import get_model
from dopd.sim.api import SimConfig
from dopd.types import SLO

FAMILIES = ("trace", "lognormal", "bimodal", "beyond-context", "sharegpt")
FAMILY_WEIGHTS = (0.3, 0.25, 0.2, 0.1, 0.15)
TRACES = ("azure-conv", "azure-code", "mooncake")
ARRIVALS = ("poisson", "gamma", "onoff", "diurnal")
SHIFTS = ("none", "rate", "mix")
REGIMES = {"ttft-tight": (1.5, 4.0), "balanced": (3.0, 2.5), "tpot-tight": (6.0, 1.5)}
"""Regime -> (TTFT multiple of the P95-prompt prefill, TPOT multiple of a batch-16 step)."""
SIZES = ("8b", "30b", "70b")
SIZE_WEIGHTS = (0.5, 0.25, 0.25)
BUDGETS = (4, 6, 8, 12, 16, 24, 32)
BUDGET_WEIGHTS = (0.2, 0.15, 0.25, 0.15, 0.13, 0.07, 0.05)
ATTAINMENT = 0.9
MIN_TTFT_S = 0.1
"""Floor of a drawn TTFT target (a front end and network add tens of ms to any first token)."""
MIN_TPOT_S = 0.01
MIN_WINDOW_S = 5.0
"""Shortest window of arrivals (scenarios of hundreds of requests/s have more requests)."""
_SALT = 0x6E4E


@dataclass(frozen=True, slots=True)
class GenScenario:
    """A drawn (or named) scenario: the suite :class:`Scenario` it runs as, and its draws."""

    scenario: Scenario
    family: str
    arrival: str
    shift: str
    size: str
    regime: str
    nominal_rps: float

    @property
    def name(self) -> str:
        return self.scenario.name

    def tags(self) -> dict[str, object]:
        c = self.scenario.cluster
        return {"family": self.family, "arrival": self.arrival, "shift": self.shift,
                "size": self.size, "regime": self.regime, "model": c.model, "gpu": c.gpu,
                "tp": c.tp, "instances": c.instances, "nominal_rps": self.nominal_rps,
                "ttft_slo_s": self.scenario.slo.ttft_s, "tpot_slo_s": self.scenario.slo.tpot_s,
                "duration_s": self.scenario.duration_s, "source": self.scenario.source.describe()}


def prefill_s(cluster: SimConfig, prompt: float) -> float:
    """Unloaded prefill time of a ``prompt``-token prompt alone on one instance (chunked by
    the token budget)."""
    latency = build_models(cluster).latency
    total, done, n = 0.0, 0, max(1, int(prompt))
    while done < n:
        chunk = min(cluster.max_batched_tokens, n - done)
        total += latency.step_time(chunk, chunk * (done + chunk), 1, 0, 0)
        done += chunk
    return total


def decode_step_s(cluster: SimConfig, batch: int, ctx: float) -> float:
    """One decode step of ``batch`` sequences at mean context ``ctx``."""
    return build_models(cluster).latency.step_time(0, 0, 0, batch, int(batch * ctx))


def nominal_rate(cluster: SimConfig, prompt_mean: float, output_mean: float) -> float:
    """A capacity estimate of the pool (requests/s): every instance prefills the mean prompt
    alone, then decodes the mean output in a batch of 64 (fewer where KV is short)."""
    models = build_models(cluster)
    ctx = prompt_mean + output_mean / 2
    batch = int(max(1, min(64, models.kv_blocks * cluster.block_size // max(ctx, 1))))
    per_request = (prefill_s(cluster, prompt_mean)
                   + output_mean * decode_step_s(cluster, batch, ctx) / batch)
    return cluster.instances / per_request


def slo_for(cluster: SimConfig, prompts: np.ndarray, outputs: np.ndarray, regime: str) -> SLO:
    """The SLO of ``regime`` (see :data:`REGIMES`) from the unloaded times of these lengths."""
    require(regime in REGIMES, f"unknown SLO regime {regime!r} (known: {', '.join(REGIMES)})")
    ttft_k, tpot_k = REGIMES[regime]
    p95 = float(np.percentile(prompts, 95))
    ctx = float(np.mean(prompts) + np.mean(outputs) / 2)
    ttft = ttft_k * prefill_s(cluster, p95)
    tpot = tpot_k * decode_step_s(cluster, 16, ctx)
    return SLO(ttft_s=round(max(ttft, MIN_TTFT_S), 4), tpot_s=round(max(tpot, MIN_TPOT_S), 4),
               attainment=ATTAINMENT)


def _pick(rng: np.random.Generator, options: tuple[object, ...],
          weights: tuple[float, ...] | None = None) -> object:
    p = None if weights is None else np.asarray(weights) / sum(weights)
    return options[int(rng.choice(len(options), p=p))]


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _cluster(rng: np.random.Generator, size: str, long_context: bool) -> SimConfig:
    instances = int(_pick(rng, BUDGETS, BUDGET_WEIGHTS))  # type: ignore[call-overload]
    if size == "8b":
        model = "llama-3.1-8b" if long_context else "llama-3-8b"
        gpu = str(_pick(rng, ("a100-80gb", "h100-sxm", "l40s")))
        return SimConfig(model=model, gpu=gpu, tp=1, instances=instances)
    if size == "30b":
        return SimConfig(model="qwen2.5-32b", gpu=str(_pick(rng, ("a100-80gb", "h100-sxm"))),
                         tp=2, instances=instances)
    model = "llama-3.1-70b" if long_context else str(_pick(rng, ("llama-3.1-70b",
                                                                  "qwen2.5-72b")))
    return SimConfig(model=model, gpu=str(_pick(rng, ("h100-sxm", "a100-80gb"))), tp=4,
                     instances=instances)


def _lengths(rng: np.random.Generator, family: str, context: int) -> str:
    if family == "lognormal":
        return (f"lognormal:prompt_mean={_loguniform(rng, 64, 32768):.0f},"
                f"prompt_cv={rng.uniform(0.3, 3):.2f},output_mean={_loguniform(rng, 4, 2048):.0f},"
                f"output_cv={rng.uniform(0.3, 2):.2f}")
    if family == "bimodal":
        return (f"bimodal:chat_prompt={_loguniform(rng, 300, 2000):.0f},"
                f"chat_output={_loguniform(rng, 50, 500):.0f},"
                f"doc_prompt={_loguniform(rng, 4000, 24000):.0f},"
                f"doc_output={_loguniform(rng, 8, 300):.0f},doc_share={rng.uniform(0.1, 0.6):.2f}")
    if family == "beyond-context":
        return (f"lognormal:prompt_mean={rng.uniform(0.3, 0.8) * context:.0f},"
                f"prompt_cv={rng.uniform(1, 2):.2f},output_mean={_loguniform(rng, 16, 512):.0f},"
                f"output_cv=1")
    return "sharegpt"


def _shifted(lengths: str, prefill_heavy: bool) -> str:
    """The length spec with prompts x4 / outputs / 4 (or the reverse)."""
    kind, _, rest = lengths.partition(":")
    if kind == "sharegpt" or not rest:
        return ("lognormal:prompt_mean=4000,prompt_cv=1,output_mean=60,output_cv=1"
                if prefill_heavy else
                "lognormal:prompt_mean=200,prompt_cv=1,output_mean=600,output_cv=1")
    out = []
    for item in rest.split(","):
        key, _, value = item.partition("=")
        v = float(value)
        if key in ("prompt_mean", "chat_prompt", "doc_prompt"):
            v = v * 4 if prefill_heavy else max(v / 4, 8)
        elif key in ("output_mean", "chat_output", "doc_output"):
            v = max(v / 4, 2) if prefill_heavy else v * 4
        out.append(f"{key}={v:g}")
    return f"{kind}:{','.join(out)}"


def _arrival(rng: np.random.Generator, kind: str, rate: float, duration: float) -> str:
    if kind == "poisson":
        return f"poisson:rate={rate:.6g}"
    if kind == "gamma":
        return f"gamma:rate={rate:.6g},cv={rng.uniform(1, 4):.2f}"
    if kind == "onoff":
        on_k, off_k = rng.uniform(1.5, 3), rng.uniform(0, 0.5)
        mean_on = rng.uniform(10, 60)
        mean_off = mean_on * (on_k - 1) / max(1 - off_k, 1e-6)  # keeps the mean rate
        return (f"onoff:rate_on={on_k * rate:.6g},rate_off={off_k * rate:.6g},"
                f"mean_on_s={mean_on:.3g},mean_off_s={mean_off:.3g}")
    if kind == "diurnal":
        return (f"diurnal:rate={rate:.6g},amplitude={rng.uniform(0.3, 0.9):.2f},"
                f"period_s={duration:.4g},phase={rng.uniform(0, 1):.2f}")
    third = duration / 3
    return (f"step:times=0/{third:.4g}/{2 * third:.4g},"
            f"rates={0.5 * rate:.6g}/{1.6 * rate:.6g}/{0.9 * rate:.6g}")


def _preview(source: Source, duration: float, count: int = 2000,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lengths of ``count`` requests like the scenario's (for SLOs and the nominal rate)."""
    if isinstance(source, TraceSource):
        w = _trace(str(resolve(source.path, TRACES_DIR))).cut(start_s=source.start_s,
                                                              max_requests=count)
        return w.prompt_tokens, w.output_tokens
    sampler = synthetic_lengths(source, duration, TRACES_DIR)
    times = np.linspace(0, duration, count, endpoint=False)
    return sampler.sample(np.random.default_rng(seed), count, times)


def build(name: str, title: str, source_of: Callable[[float, float], Source],
          cluster: SimConfig, regime: str, factor: float, requests: int, *,
          family: str, arrival: str, shift: str, size: str,
          duration_s: float | None = None, trace_rate: float | None = None) -> GenScenario:
    """A scenario whose source is ``source_of(rate at load 1, window)``; ``trace_rate`` (for a
    trace source: the rate of its window) makes load 1 the nominal rate through ``scale``."""
    context = get_model(cluster.model).max_context
    probe_source = source_of(1.0, duration_s or 600.0)
    prompts, outputs = _preview(probe_source, duration_s or 600.0)
    clipped_out = np.minimum(outputs, context - 1)
    clipped = np.minimum(prompts, context - clipped_out)
    nominal = factor * nominal_rate(cluster, float(clipped.mean()), float(clipped_out.mean()))
    duration = duration_s or float(np.clip(requests / nominal, MIN_WINDOW_S, 900))
    slo = slo_for(cluster, clipped, clipped_out, regime)
    if trace_rate is None:
        source, scale = source_of(nominal, duration), 1.0
    else:
        source, scale = probe_source, nominal / trace_rate
    scenario = Scenario(name=name, title=title, source=source, cluster=cluster, slo=slo,
                        slo_source=f"{regime}: from unloaded prefill / decode times",
                        duration_s=round(duration, 3), scale=scale, max_context=context)
    return GenScenario(scenario, family, arrival, shift, size, regime, nominal)


def draw_scenario(seed: int, index: int, requests: int = 400) -> GenScenario:
    """Scenario ``index`` of the space drawn with ``seed`` (see the module doc)."""
    require(seed >= 0 and index >= 0, "seed and index must be >= 0")
    require(requests >= 20, f"requests per scenario must be >= 20, got {requests}")
    rng = np.random.default_rng([seed, index, _SALT])
    family = str(_pick(rng, FAMILIES, FAMILY_WEIGHTS))
    size = str(_pick(rng, SIZES, SIZE_WEIGHTS))
    regime = str(_pick(rng, tuple(REGIMES)))
    factor = _loguniform(rng, 0.5, 2.0)
    trace = str(_pick(rng, TRACES)) if family == "trace" else ""
    long_context = family == "beyond-context" or trace == "mooncake" or (
        family in ("lognormal", "bimodal") and rng.random() < 0.5)
    cluster = _cluster(rng, size, long_context)
    context = get_model(cluster.model).max_context
    name = f"g{seed}-{index:03d}-{family}"
    if family == "trace":
        workload = _trace(str(resolve(trace, TRACES_DIR)))
        offset = float(rng.uniform(0, 0.6) * workload.duration_s)
        window = workload.cut(start_s=offset, duration_s=900.0)
        src = TraceSource(trace, round(offset, 1))
        return build(name, f"{trace} from {offset:.0f} s, {cluster.model} x{cluster.instances}",
                     lambda rate, d: src, cluster, regime, factor, requests, family=family,
                     arrival="trace", shift="trace", size=size,
                     trace_rate=window.rate_rps)
    arrival = str(_pick(rng, ARRIVALS))
    shift = "none"
    if rng.random() < 0.4:
        shift = "rate" if rng.random() < 0.5 else "mix"
    lengths = _lengths(rng, family, context)
    heavy = bool(rng.random() < 0.5)
    kind = "step" if shift == "rate" else arrival
    arrival_seed = int(rng.integers(0, 2**31))

    def source_of(rate: float, duration: float) -> SyntheticSource:
        arng = np.random.default_rng(arrival_seed)
        return SyntheticSource(arrival=_arrival(arng, kind, rate, duration), lengths=lengths,
                               shift=_shifted(lengths, heavy) if shift == "mix" else "none")

    shifted = "" if shift == "none" else f", {shift} shift"
    return build(name, f"{family} {kind} arrivals{shifted}, {cluster.model} "
                 f"x{cluster.instances}", source_of, cluster, regime, factor,
                 requests, family=family, arrival=kind, shift=shift, size=size)


def draw_scenarios(n: int, seed: int, requests: int = 400) -> tuple[GenScenario, ...]:
    """``n`` scenarios of the space drawn with ``seed``."""
    require(n >= 1, f"need at least one scenario, got {n}")
    return tuple(draw_scenario(seed, i, requests) for i in range(n))


# --------------------------------------------------------------------------------------------
# Named scenarios: the honest claim's two cases (issue 11).


def _fixed(name: str, title: str, arrival: Callable[[float], str], lengths: str,
           cluster: SimConfig, slo: SLO, duration: float, family: str,
           arrival_kind: str, size: str) -> GenScenario:
    context = get_model(cluster.model).max_context
    prompts, outputs = _preview(SyntheticSource(arrival="poisson:rate=1", lengths=lengths),
                                duration)
    out = np.minimum(outputs, context - 1)
    rate = nominal_rate(cluster, float(np.minimum(prompts, context - out).mean()),
                        float(out.mean()))
    source = SyntheticSource(arrival=arrival(rate), lengths=lengths)
    scenario = Scenario(name=name, title=title, source=source, cluster=cluster, slo=slo,
                        slo_source="issue 11", duration_s=duration, scale=1.0,
                        max_context=context)
    return GenScenario(scenario, family, arrival_kind, "none", size, "fixed", rate)


LONG_LENGTHS = "lognormal:prompt_mean=15000,prompt_cv=1.6,output_mean=300,output_cv=0.8"
SUMMARY_LENGTHS = "lognormal:prompt_mean=2000,prompt_cv=0.8,output_mean=60,output_cv=1"


def _long_context() -> GenScenario:
    return _fixed("long-context", "long-context lognormal (mean 15k, tail past 128k), "
                  "Llama-3.1-8B, 8 x A100-80GB, TTFT 5 s / TPOT 100 ms",
                  lambda r: f"poisson:rate={r:g}", LONG_LENGTHS,
                  SimConfig(model="llama-3.1-8b", gpu="a100-80gb", instances=8),
                  SLO(ttft_s=5.0, tpot_s=0.1, attainment=ATTAINMENT), 300.0,
                  "beyond-context", "poisson", "8b")


def _summarize(model: str, gpu: str, tp: int, instances: int) -> GenScenario:
    size = {1: "8b", 2: "30b", 4: "70b"}[tp]
    return _fixed(f"summarize-{size}-x{instances}",
                  f"summarization (prompts ~2k, outputs ~60, Gamma CV 3), {model} TP{tp} "
                  f"x{instances}, TTFT 0.5 s / TPOT 100 ms",
                  lambda r: f"gamma:rate={r:g},cv=3", SUMMARY_LENGTHS,
                  SimConfig(model=model, gpu=gpu, tp=tp, instances=instances),
                  SLO(ttft_s=0.5, tpot_s=0.1, attainment=ATTAINMENT), 120.0,
                  "lognormal", "gamma", size)


NAMED: dict[str, Callable[[], GenScenario]] = {
    "long-context": _long_context,
    "summarize-8b-x4": lambda: _summarize("llama-3-8b", "a100-80gb", 1, 4),
    "summarize-8b-x8": lambda: _summarize("llama-3-8b", "a100-80gb", 1, 8),
    "summarize-70b-x4": lambda: _summarize("llama-2-70b", "h100-sxm", 4, 4),
    "summarize-70b-x8": lambda: _summarize("llama-2-70b", "h100-sxm", 4, 8),
    "summarize-30b-x4": lambda: _summarize("qwen2.5-32b", "h100-sxm", 2, 4),
    "summarize-30b-x8": lambda: _summarize("qwen2.5-32b", "h100-sxm", 2, 8),
}
"""Fixed scenarios by name (load 1 = their :func:`nominal_rate`)."""


def named_scenario(name: str) -> GenScenario:
    """The named scenario; DopdError listing the names otherwise."""
    require(name in NAMED, f"unknown scenario {name!r} (known: {', '.join(NAMED)})")
    return NAMED[name]()
