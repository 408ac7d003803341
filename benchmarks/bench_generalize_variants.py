"""Policy variants against a finished ``dopd experiment generalize`` run, without rerunning its
baselines: how the issue-11 defaults were chosen on seed 0.

The baselines' max goodputs (plain, fair, DistServe-style) come from that run's
``results.json``; each variant gets the same max-goodput scan as the run's proposed policy, on
the same scenarios (drawn from the run's seed) with the same realism, so a variant's figures
equal what ``dopd experiment generalize --proposed VARIANT`` on that seed would report (the
baselines do not depend on the proposed policy). Printed per variant: the geometric mean of the
max-goodput ratio to the strongest baseline, its minimum, over the non-stationary scenarios, to
the best plain baseline, and win/tie/loss (tie within 3 %); ``--each`` adds every scenario.

    dopd experiment generalize --seed 0 --requests 400 --scenarios 24 --workers 2 --out out/gen0
    python3 benchmarks/bench_generalize_variants.py out/gen0/results.json dopd dopd:mixtok=auto
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from dopd.data import TRACES_DIR
from dopd.errors import DopdError
from dopd.experiments.fair import Contender, Variant
from dopd.experiments.gen_space import draw_scenarios
from dopd.experiments.generalize_run import check_proposed, with_realism
from dopd.experiments.generalize_tasks import ScanOutcome, ScanSettings, ScanTask
from dopd.experiments.realism import Realism
from dopd.experiments.suite_runner import Reporter, executor

TIE = 0.03


class _Progress(Reporter):
    """One line per finished scan, on stderr."""

    def task_done(self, done: int, total: int, line: str) -> None:
        print(f"[{done}/{total}] {line}", file=sys.stderr, flush=True)


def _ratio(value: float, reference: float) -> float:
    if reference > 0:
        return value / reference
    return 1.0 if value == 0 else math.inf


def _geomean(values: list[float]) -> float:
    floor = [max(v, 1e-3) for v in values]
    return math.exp(sum(math.log(v) for v in floor) / len(floor)) if floor else math.nan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="results.json of a dopd experiment generalize run "
                                        "made with --scenarios N (not --names)")
    parser.add_argument("variants", nargs="+", help="policy specs to compare (e.g. dopd)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--each", action="store_true", help="print every scenario too")
    args = parser.parse_args(argv)
    try:
        run = json.loads(Path(args.results).read_text())
        seed, reference = int(run["seed"]), {s["name"]: s for s in run["scenarios"]}
        words = str(run["command"]).split()
        requests = int(words[words.index("--requests") + 1]) if "--requests" in words else 400
        default_realism = not run["realism"]["oracle"] and run["realism"]["bias"] is None \
            and run["realism"]["noise"] is None and run["realism"]["calibration"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: cannot read {args.results}: {exc}", file=sys.stderr)
        return 2
    if not default_realism:
        print("error: only runs with the default realism are supported", file=sys.stderr)
        return 2
    scenarios = with_realism(draw_scenarios(len(reference), seed, requests), Realism(), seed)
    if {g.name for g in scenarios} != set(reference):
        print(f"error: {args.results} was not made by --scenarios {len(reference)} "
              f"--seed {seed} --requests {requests}", file=sys.stderr)
        return 2
    try:
        for spec in args.variants:
            check_proposed(scenarios, spec)
        tasks = [ScanTask(g.scenario, Contender(spec, "fixed", (Variant(spec),), baseline=False),
                          ScanSettings(), str(TRACES_DIR), seed)
                 for spec in args.variants for g in scenarios]
    except DopdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    results: dict[tuple[str, str], float] = {}
    reporter = _Progress()
    with executor(args.workers, "local", None) as pool:
        pending = {pool.submit(t) for t in tasks}
        while pending:
            finished, pending = pool.wait(pending, reporter)
            for outcome in finished:
                assert isinstance(outcome, ScanOutcome)
                results[(outcome.scenario, outcome.policy)] = outcome.goodput_rps
                reporter.task_done(len(results), len(tasks),
                                   f"{outcome.scenario} {outcome.policy}: "
                                   f"{outcome.goodput_rps:.2f} req/s")
    print(f"{len(tasks)} scans in {time.perf_counter() - started:.0f} s; seed {seed}, "
          f"baselines from {args.results}")
    for spec in args.variants:
        strong, plain, shifted, rows = [], [], [], []
        for g in scenarios:
            record = reference[g.name]
            policies = record["policies"]
            best = policies[record["strongest"]]["max_goodput_rps"]
            best_plain = policies[record["best_plain"]]["max_goodput_rps"]
            got = results[(g.name, spec)]
            a, b = _ratio(got, best), _ratio(got, best_plain)
            strong.append(a)
            plain.append(b)
            if record["tags"].get("shift", "none") != "none":
                shifted.append(a)
            rows.append(f"  {g.name:28s} {got:9.2f} req/s  {a:5.2f}x strongest  {b:5.2f}x plain")
        wins = sum(a > 1 + TIE for a in strong)
        ties = sum(abs(a - 1) <= TIE for a in strong)
        print(f"{spec}: vs strongest geomean {_geomean(strong):.3f}x (min {min(strong):.2f}x, "
              f"non-stationary {_geomean(shifted):.3f}x, W/T/L {wins}/{ties}/"
              f"{len(strong) - wins - ties}); vs plain geomean {_geomean(plain):.3f}x")
        if args.each:
            print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
