"""``dopd experiment SUITE``: run a built-in experiment suite and write its report.

The work is in :mod:`dopd.experiments`; this module parses options, picks the traces directory
(default: the data shipped in :mod:`dopd.data`), draws
progress on stderr with rich and prints where the report went.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dopd.cli.checks import check_output_dir
from dopd.cli.common import experiment_repeat_flags, parse_list
from dopd.data import TRACES_DIR
from dopd.errors import DopdError, require
from dopd.experiments import SUITES, Reporter, drop_unregistered, get_suite, run_suite
from dopd.experiments.realism import Realism, apply_realism
from dopd.experiments.suite_runner import max_workers

DESCRIPTION = """\
Reproduce the paper's comparison in simulation: for every scenario of the suite (a trace or a
synthetic workload on a model / GPU / instance budget under an SLO), find each policy's max
goodput (highest load at 90% SLO attainment, by bisection), run every policy at the load where
the best baseline reaches 90%, and write report.md (tables, targets verdict), results.json,
config.json and PNG plots to --out.

Realism: by default the control plane predicts with a latency model that is off the simulated
hardware by a seeded model bias drawn per scenario in +-20% and a step noise drawn in 5-10%, and
calibrates itself online (shown per scenario in the report); --oracle makes its model exact (an
ablation), --no-calibration turns the calibration off, --model-bias / --step-noise fix the
mismatch.

Suites: paper (the full comparison, under 30 minutes on 2 cores), quick (a couple of minutes),
smoke (seconds). Policies not registered yet are skipped (and listed in the report) unless named
with --policies.

generalize: N scenarios drawn (seeded) from a documented space of workloads, clusters and SLOs
that dopd was not tuned on; dopd's max goodput against plain baselines, fair baselines (dopd's
router, token budget and split chosen in hindsight) and a DistServe-style planned split, with
ratio distributions, win/tie/loss, attainment-vs-load curves and the five worst scenarios
diagnosed (--scenarios N --seed S, or --names for fixed scenarios).
"""

EPILOG = """\
examples:
  dopd experiment smoke --out /tmp/smoke
  dopd experiment paper --out results/paper --workers 2
  dopd experiment quick --scenarios conv-8b --policies colocated,static:best,dopd
  dopd experiment paper --backend ray --ray-address auto   # jobs as Ray tasks on a cluster
  dopd experiment generalize --scenarios 24 --seed 1 --out results/generalize
  dopd experiment generalize --names long-context,summarize-8b-x4 --out /tmp/honest
"""

GENERALIZE = "generalize"


class RichReporter(Reporter):
    """A progress bar (on a terminal) and one line per finished task on stderr."""

    def __init__(self, console: Console, quiet: bool) -> None:
        self.console = console
        self.quiet = quiet
        self.progress: Progress | None = None
        self.task: Any = None

    def start(self, total_tasks: int) -> None:
        if self.quiet or not self.console.is_terminal:
            return
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=self.console, transient=True)
        self.task = self.progress.add_task("experiment", total=total_tasks)
        self.progress.start()

    def probe(self, line: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=line[:90])

    def task_done(self, done: int, total: int, line: str) -> None:
        if self.quiet:
            return
        if self.progress is not None:
            self.progress.update(self.task, completed=done)
        self.console.print(f"[{done}/{total}] {line}", highlight=False)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def command_line(args: argparse.Namespace, out: Path, workers: int) -> str:
    """The command that repeats this run, with every option spelled out."""
    parts = ["dopd", "experiment", args.suite, "--out", str(out), "--workers", str(workers)]
    if args.policies:
        parts += ["--policies", ",".join(args.policies)]
    if args.scenarios:
        parts += ["--scenarios", ",".join(args.scenarios)]
    if args.traces_dir:
        parts += ["--traces-dir", args.traces_dir]
    return shlex.join(parts + experiment_repeat_flags(args))


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dopd experiment``."""
    if args.suite == GENERALIZE:
        return _generalize(args)
    require(args.seed is None and args.names is None and args.requests is None
            and args.proposed is None,
            "--seed, --names, --requests and --proposed apply to generalize only")
    suite = get_suite(args.suite)
    cpus = max_workers()
    workers = args.workers if args.workers is not None else min(2, cpus)
    require(1 <= workers <= cpus, f"--workers must be between 1 and {cpus} (CPUs), got {workers}")
    require(args.ray_address is None or args.backend == "ray", "--ray-address needs --backend ray")
    if args.ray_address is not None:
        from dopd.serve.ray_connect import check_address

        check_address(args.ray_address)
    require(not args.oracle or (args.model_bias is None and args.step_noise is None),
            "--oracle takes no --model-bias or --step-noise")
    realism = Realism(oracle=args.oracle, bias=args.model_bias, noise=args.step_noise,
                      calibration=not args.no_calibration)
    out_given = Path(args.out if args.out else f"experiment-{suite.name}")
    out_existed = out_given.exists()
    out = check_output_dir(str(out_given))
    try:
        suite = apply_realism(suite, realism)
        suite = suite.select(args.scenarios, args.policies)
        suite, skipped = drop_unregistered(suite, args.policies or ())
        traces = Path(args.traces_dir) if args.traces_dir else TRACES_DIR
        require(traces.is_dir(), f"traces directory not found: {traces}")
    except DopdError:
        if not out_existed and not any(out.iterdir()):
            out.rmdir()  # a run that fails its checks leaves nothing behind
        raise
    console = Console(file=sys.stderr, width=None if sys.stderr.isatty() else 160)
    if skipped and not args.quiet:
        console.print(f"not registered yet, skipped: {', '.join(skipped)}", highlight=False)
    reporter = RichReporter(console, args.quiet)
    try:
        result = run_suite(suite, traces.resolve(), workers, reporter, skipped,
                           backend=args.backend, ray_address=args.ray_address)
    finally:
        reporter.stop()
    command = command_line(args, out, workers)
    from dopd.experiments.report import write_report  # matplotlib: only when writing

    paths = write_report(result, out, command)
    if not args.quiet:
        print(f"wrote {len(paths)} files to {out} (report: {out / 'report.md'}) in "
              f"{result.wall_s:.0f} s with {workers} worker(s)")
    return 0


def _generalize(args: argparse.Namespace) -> int:
    from dopd.cli.generalize_cmd import run_generalize_cmd

    cpus = max_workers()
    workers = args.workers if args.workers is not None else min(2, cpus)
    require(1 <= workers <= cpus, f"--workers must be between 1 and {cpus} (CPUs), got {workers}")
    require(args.ray_address is None or args.backend == "ray", "--ray-address needs --backend ray")
    require(not args.oracle or (args.model_bias is None and args.step_noise is None),
            "--oracle takes no --model-bias or --step-noise")
    args.seed = 1 if args.seed is None else args.seed
    require(args.seed >= 0, f"--seed must be >= 0, got {args.seed}")
    args.requests = 400 if args.requests is None else args.requests
    args.proposed = args.proposed or "dopd"
    realism = Realism(oracle=args.oracle, bias=args.model_bias, noise=args.step_noise,
                      calibration=not args.no_calibration)
    return run_generalize_cmd(args, workers, realism, RichReporter)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``dopd experiment``."""
    p = subparsers.add_parser(
        "experiment", help="run an experiment suite (the paper's comparison) and write a report",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("suite", choices=[*SUITES.names(), GENERALIZE],
                   help="which suite, or generalize (scenarios drawn from a space)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory, created and checked writable before the work "
                   "(default experiment-SUITE)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes (default min(2, CPUs))")
    p.add_argument("--policies", type=parse_list, default=None, metavar="LIST",
                   help="comma-separated subset of the suite's policies (the baselines are "
                   "always run)")
    p.add_argument("--scenarios", type=parse_list, default=None, metavar="LIST",
                   help="comma-separated subset of the suite's scenarios; for generalize: how "
                   "many scenarios to draw (default 24)")
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="generalize: the seed of the scenario draw and the runs (default 1)")
    p.add_argument("--names", type=parse_list, default=None, metavar="LIST",
                   help="generalize: fixed scenarios by name instead of drawn ones "
                   "(long-context, summarize-8b-x4, summarize-8b-x8, summarize-30b-x4, ...)")
    p.add_argument("--requests", type=int, default=None, metavar="N",
                   help="generalize: about how many requests a scenario has at load 1 "
                   "(default 400; the run time scales with it)")
    p.add_argument("--proposed", default=None, metavar="SPEC",
                   help="generalize: the policy compared with the baselines (default dopd)")
    p.add_argument("--traces-dir", default=None, metavar="PATH",
                   help="directory that the suite's relative trace paths resolve against "
                   "(default: the data shipped with dopd; the built-in suites name shipped "
                   "datasets, see dopd data list)")
    p.add_argument("--oracle", action="store_true",
                   help="ablation: the control plane's latency model is exactly the simulated "
                   "hardware (no bias, no step noise)")
    p.add_argument("--model-bias", type=float, default=None, metavar="B",
                   help="the control plane predicts (1+B) x the true step times in every "
                   "scenario (default: drawn per scenario in +-0.2)")
    p.add_argument("--step-noise", type=float, default=None, metavar="SIGMA",
                   help="lognormal step-time noise (mean-preserving) in every scenario "
                   "(default: drawn per scenario in [0.05, 0.10])")
    p.add_argument("--no-calibration", action="store_true",
                   help="ablation: the control plane does not learn its latency model from "
                   "observed step times")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress, only errors")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: a process pool here (default); ray: every simulation job is a "
                   "Ray task (one CPU each)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="with --backend ray: the cluster (auto, HOST:PORT, ray://HOST:PORT); "
                   "default: a local Ray instance with --workers CPUs")
    p.set_defaults(func=run)
    return p
