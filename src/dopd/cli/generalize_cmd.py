"""``dopd experiment generalize``: the proposed policy against plain and fair baselines on
scenarios drawn from a documented space (:mod:`dopd.experiments.gen_space`); the work is in
:mod:`dopd.experiments.generalize_run`, the report in :mod:`dopd.experiments.generalize_report`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from rich.console import Console

from dopd.cli.checks import check_output_dir
from dopd.cli.common import experiment_repeat_flags
from dopd.data import TRACES_DIR
from dopd.errors import DopdError, require
from dopd.experiments.gen_space import GenScenario, draw_scenarios, named_scenario
from dopd.experiments.realism import Realism

HELP = """\
generalize: N scenarios drawn (seeded) from the space documented in dopd.experiments.gen_space
(windows of the shipped traces, synthetic length mixes, Poisson / Gamma / on-off / diurnal and
non-stationary arrivals, 8B-70B models on A100 / H100 / L40S, 4-32 instances, TTFT-tight /
balanced / TPOT-tight SLOs from each scenario's unloaded times); per scenario the max goodput of
the proposed policy, the plain baselines, the fair baselines (dopd's router, budget and split
chosen in hindsight) and a DistServe-style planned split; --scenarios N --seed S, or --names
for fixed scenarios (long-context, summarize-8b-x4, ...)."""


def _scenarios(args: argparse.Namespace) -> tuple[GenScenario, ...]:
    if args.names:
        require(not args.scenarios, "give --scenarios N or --names, not both")
        return tuple(named_scenario(n) for n in args.names)
    given = args.scenarios or ["24"]
    require(len(given) == 1 and given[0].isdigit() and int(given[0]) >= 1,
            f"generalize: --scenarios takes a number of scenarios >= 1, got {','.join(given)}")
    return draw_scenarios(int(given[0]), args.seed, args.requests)


def command_line(args: argparse.Namespace, out: Path, workers: int) -> str:
    """The command that repeats this run."""
    parts = ["dopd", "experiment", "generalize", "--out", str(out), "--workers", str(workers),
             "--seed", str(args.seed), "--requests", str(args.requests)]
    if args.names:
        parts += ["--names", ",".join(args.names)]
    else:
        parts += ["--scenarios", (args.scenarios or ["24"])[0]]
    if args.proposed != "dopd":
        parts += ["--proposed", args.proposed]
    return shlex.join(parts + experiment_repeat_flags(args))


def run_generalize_cmd(args: argparse.Namespace, workers: int, realism: Realism,
                       reporter_factory: type) -> int:
    """Entry point of ``dopd experiment generalize`` (options checked by the caller)."""
    require(args.policies is None, "generalize takes --proposed SPEC, not --policies")
    require(args.traces_dir is None, "generalize uses the shipped traces (no --traces-dir)")
    require(args.requests >= 20, f"--requests must be >= 20, got {args.requests}")
    out_given = Path(args.out if args.out else "experiment-generalize")
    out_existed = out_given.exists()
    out = check_output_dir(str(out_given))
    try:
        scenarios = _scenarios(args)
        from dopd.control.policies.base import load_policies
        from dopd.experiments.generalize_run import check_proposed

        family = args.proposed.partition(":")[0].strip()
        require(family in load_policies(), f"policy {args.proposed!r} is not registered")
        check_proposed(scenarios, args.proposed)
    except DopdError:
        if not out_existed and not any(out.iterdir()):
            out.rmdir()
        raise
    from dopd.experiments.generalize_run import run_generalize

    console = Console(file=sys.stderr, width=None if sys.stderr.isatty() else 160)
    reporter = reporter_factory(console, args.quiet)
    try:
        result = run_generalize(scenarios, args.seed, TRACES_DIR, workers, reporter,
                                proposed=args.proposed, realism=realism,
                                backend=args.backend, ray_address=args.ray_address)
    finally:
        reporter.stop()
    from dopd.experiments.generalize_report import write_generalize_report

    paths, s = write_generalize_report(result, out, command_line(args, out, workers))
    if not args.quiet:
        print(f"{args.proposed} vs the strongest baseline: geometric mean "
              f"{s.geomean_strongest:.2f}x (min {s.min_strongest:.2f}x), win/tie/loss "
              f"{s.wins['win']}/{s.wins['tie']}/{s.wins['loss']}; vs the best plain baseline: "
              f"{s.geomean_plain:.2f}x")
        print(f"wrote {len(paths)} files to {out} (report: {out / 'report.md'}) in "
              f"{result.wall_s:.0f} s with {workers} worker(s)")
    return 0
