"""Argparse helpers shared by ``simulate``, ``serve``, ``bench``, ``plan`` and ``experiment``.

Every option that maps to a field of :class:`dopd.config.RunConfig` defaults to None, so
:func:`config_from_args` can tell an option that was given (it overrides the ``--config`` file)
from one that was not (the file or the built-in default applies). Help texts show the built-in
defaults, read from the config dataclasses so they never drift.

Typical use in a command module::

    def add_parser(subparsers):
        p = subparsers.add_parser("plan", help=...)
        add_config_option(p); add_cluster_options(p); add_slo_options(p); add_workload_options(p)
        p.set_defaults(func=run)

    def run(args):
        cfg = config_from_args(args)   # RunConfig, validated
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dopd.cli.checks import add_json_option
from dopd.control.routing.router import load_routers
from dopd.errors import require
from dopd.perf import get_model
from dopd.sim.run_config import (
    DEFAULT_SYNTHETIC_REQUESTS,
    RunConfig,
    WorkloadConfig,
    load_run_config,
)
from dopd.workload import (
    ARRIVALS,
    LENGTHS,
    ClipContext,
    Empirical,
    LengthSampler,
    LogNormal,
    Workload,
    load_lengths,
    load_workload,
    make_arrival,
    parse_lengths,
    synthetic_workload,
)
from dopd.workload.spec import split_spec

_DEFAULT = RunConfig()

OPTION_KEYS: dict[str, str] = {
    "model": "cluster.model",
    "gpu": "cluster.gpu",
    "tp": "cluster.tp",
    "preset": "cluster.preset",
    "calibration": "cluster.calibration",
    "profile": "cluster.profile",
    "instances": "cluster.instances",
    "kv_mem_util": "cluster.kv_mem_util",
    "router": "cluster.router",
    "step_noise": "cluster.truth.step_noise",
    "model_bias": "cluster.truth.model_bias",
    "truth_calibration": "cluster.truth.truth_calibration",
    "no_calibration": "cluster.online_calibration",
    "slo_ttft": "slo.ttft_s",
    "slo_tpot": "slo.tpot_s",
    "attainment": "slo.attainment",
    "trace": "workload.trace",
    "lengths": "workload.lengths",
    "arrival": "workload.arrival",
    "rate": "workload.rate",
    "cv": "workload.cv",
    "rate_scale": "workload.rate_scale",
    "duration": "workload.duration_s",
    "requests": "workload.requests",
    "seed": "seed",
    "policy": "policies",
    "max_goodput": "goodput.enabled",
    "goodput_lo": "goodput.lo",
    "goodput_hi": "goodput.hi",
    "goodput_rel_tol": "goodput.rel_tol",
    "goodput_max_runs": "goodput.max_runs",
}
"""argparse ``dest`` -> dotted :class:`RunConfig` key, for every option defined here."""


def parse_list(text: str) -> tuple[str, ...]:
    """Split a comma-separated option value (``"colocated,static:4:4"``), dropping blanks."""
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config FILE.toml``: a run configuration file that the other options override."""
    parser.add_argument(
        "--config", metavar="FILE.toml", default=None,
        help="run configuration file (TOML); options given on the command line override it",
    )


def add_cluster_options(parser: argparse.ArgumentParser, instances: bool = True) -> None:
    """Model, GPU, tensor parallelism, latency preset / calibration, KV memory, instance budget."""
    c = _DEFAULT.cluster
    g = parser.add_argument_group("model and cluster")
    g.add_argument("--model", default=None, help=f"model name from the catalog (default {c.model})")
    g.add_argument("--gpu", default=None, help=f"GPU name from the catalog (default {c.gpu})")
    g.add_argument("--tp", type=int, default=None, help=f"tensor-parallel GPUs per instance "
                   f"(default {c.tp})")
    g.add_argument("--preset", default=None, help=f"latency-model preset (default {c.preset})")
    g.add_argument("--calibration", default=None, metavar="NAME|PATH",
                   help="latency calibration: a built-in name or a fit file (default: none, "
                   "the roofline preset)")
    g.add_argument("--profile", default=None, metavar="NAME|DIR",
                   help="measured operator profile for the latency model outside attention: "
                   "vidur-a100 (Llama-3-8B on A100) or a profile folder (default: none)")
    g.add_argument("--kv-mem-util", type=float, default=None, metavar="FRAC",
                   help=f"share of each GPU's memory the engine may use for weights, "
                   f"activations and KV cache, as vLLM's gpu_memory_utilization "
                   f"(default {c.kv_mem_util})")
    g.add_argument("--router", default=None, metavar="SPEC",
                   help=f"request router: auto (the policy's own), or a name from "
                   f"{', '.join(load_routers().names())}, with options as NAME:KEY=VALUE,... "
                   f"(e.g. length-aware:bypass=off,admit_k=2) (default {c.router})")
    if instances:
        g.add_argument("--instances", type=int, default=None, metavar="N",
                       help=f"instance budget, each of --tp GPUs (default {c.instances})")


TRUTH_HELP = (
    "The simulated hardware (the truth) times every step; the router, admission control and "
    "the P/D solver predict with the control plane's own latency model (the belief), which "
    "learns from observed step times unless --no-calibration. By default they agree exactly "
    "(an oracle).")


def add_truth_options(parser: argparse.ArgumentParser) -> None:
    """``--step-noise``, ``--model-bias``, ``--truth-calibration``, ``--no-calibration``."""
    t = _DEFAULT.cluster.truth
    g = parser.add_argument_group("truth and belief", TRUTH_HELP)
    g.add_argument("--step-noise", type=float, default=None, metavar="SIGMA",
                   help="multiply each step's true time by seeded lognormal noise exp(SIGMA Z - "
                   "SIGMA^2/2) (mean-preserving), e.g. 0.1 (default "
                   f"{t.step_noise:g})")
    g.add_argument("--model-bias", type=float, default=None, metavar="B",
                   help="the belief predicts (1+B) x the true step times; -0.2: it thinks the "
                   f"GPU is 20%% faster than it is (capacity unchanged) (default {t.model_bias:g})")
    g.add_argument("--truth-calibration", default=None,
                   metavar="NAME|PATH|preset:NAME|profile:NAME",
                   help="time steps with another model than the configured one (the belief): "
                   "a built-in fit or fit file as --calibration, preset:NAME (e.g. "
                   "preset:modern-fit, the preset fitted to measured A100 profiles) or "
                   "profile:NAME (e.g. profile:vidur-a100) (default: the configured model)")
    g.add_argument("--no-calibration", action="store_const", const=False, default=None,
                   help="ablation: the belief does not learn from observed step times")


def add_slo_options(parser: argparse.ArgumentParser) -> None:
    """TTFT and TPOT targets and the attainment target."""
    s = _DEFAULT.slo
    g = parser.add_argument_group("SLO")
    g.add_argument("--slo-ttft", type=float, default=None, metavar="S",
                   help=f"TTFT target in seconds (default {s.ttft_s})")
    g.add_argument("--slo-tpot", type=float, default=None, metavar="S",
                   help=f"TPOT target in seconds (default {s.tpot_s})")
    g.add_argument("--attainment", type=float, default=None, metavar="FRAC",
                   help=f"SLO attainment target, e.g. 0.9 or 0.99 (default {s.attainment})")


def add_workload_options(parser: argparse.ArgumentParser, rate: float | None = None,
                         requests: int | None = None) -> None:
    """A trace, or synthetic arrivals with lengths from a file or the built-in statistics.

    ``rate`` and ``requests`` are the synthetic defaults the command applies itself, for the
    help text (None: the run configuration's)."""
    w = _DEFAULT.workload
    rate = w.rate if rate is None else rate
    requests = DEFAULT_SYNTHETIC_REQUESTS if requests is None else requests
    g = parser.add_argument_group(
        "workload",
        "Replay --trace, or generate arrivals (--arrival, --rate, --cv) with lengths sampled from "
        "--lengths or from built-in statistics.",
    )
    src = g.add_mutually_exclusive_group()
    src.add_argument("--trace", default=None, metavar="NAME|PATH",
                     help="trace with arrival times and lengths: a shipped dataset (azure-conv, "
                     "azure-code, mooncake; see dopd data list) or a file (Azure CSV, Mooncake "
                     "JSONL, dopd CSV)")
    src.add_argument("--lengths", default=None, metavar="NAME|PATH|SPEC",
                     help="dataset or file to resample prompt/output lengths from (e.g. "
                     "sharegpt), or a length-sampler spec such as lognormal:prompt_mean=1000,"
                     "prompt_cv=1,output_mean=200,output_cv=1")
    g.add_argument("--arrival", default=None, metavar="SPEC",
                   help=f"synthetic arrival process: {', '.join(ARRIVALS.names())}, or a spec "
                   f"such as gamma:cv=3 (default {w.arrival})")
    g.add_argument("--rate", type=float, default=None, metavar="RPS",
                   help=f"synthetic arrival rate in req/s, where the --arrival spec sets none "
                   f"(default {rate:g})")
    g.add_argument("--cv", type=float, default=None,
                   help="inter-arrival coefficient of variation (gamma), where the spec sets none")
    g.add_argument("--rate-scale", type=float, default=None, metavar="K",
                   help="multiply the arrival rate by K; a trace is time-compressed "
                   f"(default {w.rate_scale:g})")
    cut = g.add_mutually_exclusive_group()
    cut.add_argument("--duration", type=float, default=None, metavar="S",
                     help="keep the requests arriving in the first S seconds")
    cut.add_argument("--requests", type=int, default=None, metavar="N",
                     help="keep the first N requests (synthetic default "
                     f"{requests})")
    g.add_argument("--seed", type=int, default=None,
                   help=f"random seed of the workload and the run (default {_DEFAULT.seed})")


def add_goodput_options(parser: argparse.ArgumentParser) -> None:
    """``--max-goodput`` and the bracket / tolerance of its bisection."""
    gp = _DEFAULT.goodput
    g = parser.add_argument_group(
        "max goodput", "Bisection of the rate scale at which attainment stays >= --attainment."
    )
    g.add_argument("--max-goodput", action="store_const", const=True, default=None,
                   help="also find each policy's max goodput")
    g.add_argument("--goodput-lo", type=float, default=None, metavar="K",
                   help=f"lowest rate scale searched (default {gp.lo:g})")
    g.add_argument("--goodput-hi", type=float, default=None, metavar="K",
                   help=f"first guess of a rate scale that misses the target, doubled while "
                   f"it does not (default {gp.hi:g})")
    g.add_argument("--goodput-rel-tol", type=float, default=None, metavar="FRAC",
                   help=f"relative precision of the rate scale found (default {gp.rel_tol:g})")
    g.add_argument("--goodput-max-runs", type=int, default=None, metavar="N",
                   help=f"most simulations per policy in the search (default {gp.max_runs})")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--json [PATH]`` (see :func:`dopd.cli.checks.add_json_option`), ``--out`` and
    ``--quiet``. Both outputs are checked writable before the work starts."""
    g = parser.add_argument_group("output")
    add_json_option(g, "the results (and, in a file, the resolved config beside it)")
    g.add_argument("--out", default=None, metavar="DIR",
                   help="write per-request CSVs, timelines, the resolved config, the JSON and "
                   "plots to DIR (created now; a run fails at once when it cannot write there)")
    g.add_argument("--quiet", "-q", action="store_true",
                   help="no progress bar and no table, only errors")


_EXCLUSIVE: tuple[tuple[str, str], ...] = (
    ("workload.trace", "workload.lengths"),
    ("workload.duration_s", "workload.requests"),
)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted config overrides for the options of this module that were given.

    Giving one of a pair of exclusive options (``--trace`` / ``--lengths``, ``--duration`` /
    ``--requests``) also clears the other, so it replaces what a ``--config`` file set.
    """
    out: dict[str, Any] = {}
    for dest, key in OPTION_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            out[key] = value
    for a, b in _EXCLUSIVE:
        if a in out and b not in out:
            out[b] = None
        elif b in out and a not in out:
            out[a] = None
    return out


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Defaults, then ``--config`` (if the parser has it and it was given), then the options."""
    return load_run_config(getattr(args, "config", None), overrides_from_args(args))


ProgressFn = Callable[[float, str], None]
"""Progress callback: ``(fraction done in [0, 1], description)``."""


@contextlib.contextmanager
def progress_bar(
    quiet: bool = False, stream: Any = None, delay_s: float = 0.5
) -> Iterator[ProgressFn | None]:
    """Yield a progress callback drawing a rich bar on ``stream`` (stderr by default), or None
    when ``quiet`` or when the stream is not a terminal (so logs and pipes stay clean).

    The bar appears only once ``delay_s`` has passed, so short runs print nothing, and it is
    removed when the block ends.
    """
    stream = sys.stderr if stream is None else stream
    if quiet or not getattr(stream, "isatty", lambda: False)():
        yield None
        return
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=Console(file=stream), transient=True,
    )
    task = progress.add_task("", total=1.0)
    started_at = time.monotonic()

    def update(fraction: float, description: str) -> None:
        progress.update(task, completed=min(max(fraction, 0.0), 1.0), description=description)
        if not progress.live.is_started and time.monotonic() - started_at >= delay_s:
            progress.start()

    try:
        yield update
    finally:
        if progress.live.is_started:
            progress.stop()


BUILTIN_LENGTHS = LogNormal(prompt_mean=1155, prompt_cv=0.96, output_mean=211, output_cv=0.77,
                            rho=0.09)
"""Built-in length statistics: lognormal fits of the moments of the Azure LLM 2023 conversation
trace (prompt mean 1155 tokens, CV 0.96; output mean 211, CV 0.77; log-length correlation 0.09),
clipped to the model's context window where used."""


def length_sampler(spec: str | None, model: str) -> LengthSampler:
    """Sampler for ``WorkloadConfig.lengths``: a dataset name or trace file (resampled jointly), a
    length-sampler spec, or None for :data:`BUILTIN_LENGTHS` clipped to ``model``'s context."""
    if spec is None:
        return ClipContext(BUILTIN_LENGTHS, get_model(model).max_context)
    kind, _ = split_spec(spec)
    if kind in LENGTHS and not Path(spec).exists():
        return parse_lengths(spec)
    return Empirical(load_lengths(spec))


def build_workload(cfg: WorkloadConfig, seed: int, model: str) -> Workload:
    """The workload ``cfg`` describes: the trace, or synthetic arrivals (seeded) with sampled
    lengths; then scaled by ``rate_scale`` and cut. DopdError for bad files or specs."""
    if cfg.trace is not None:
        base = load_workload(cfg.trace)
    else:
        kind, params = split_spec(cfg.arrival)
        accepted = inspect.signature(ARRIVALS.get(kind)).parameters
        if "rate" in accepted:
            params.setdefault("rate", cfg.rate)
        if cfg.cv is not None:
            require("cv" in accepted, f"arrival process {kind!r} takes no cv")
            params.setdefault("cv", cfg.cv)
        arrival = make_arrival(kind, **params)
        count = cfg.requests
        if count is None and cfg.duration_s is None:
            count = DEFAULT_SYNTHETIC_REQUESTS
        base = synthetic_workload(
            arrival,
            length_sampler(cfg.lengths, model),
            duration_s=None if count is not None else cfg.duration_s * cfg.rate_scale,
            num_requests=count,
            seed=seed,
            name=f"{kind}-{cfg.lengths or 'builtin'}",
        )
    scaled = base if cfg.rate_scale == 1.0 else base.scale_rate(cfg.rate_scale)
    if cfg.duration_s is None and cfg.requests is None:
        return scaled
    return scaled.cut(duration_s=cfg.duration_s, max_requests=cfg.requests)


def experiment_repeat_flags(args: argparse.Namespace) -> list[str]:
    """The realism and backend options of a ``dopd experiment`` run, as the command line that
    repeats it spells them (nothing for a default)."""
    parts: list[str] = []
    if args.oracle:
        parts += ["--oracle"]
    if args.model_bias is not None:
        parts += ["--model-bias", f"{args.model_bias:g}"]
    if args.step_noise is not None:
        parts += ["--step-noise", f"{args.step_noise:g}"]
    if args.no_calibration:
        parts += ["--no-calibration"]
    if args.backend == "ray":
        parts += ["--backend", "ray"]
        if args.ray_address:
            parts += ["--ray-address", args.ray_address]
    return parts
