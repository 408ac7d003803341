"""``dopd profile``: measure the built-in engine's step times and fit a latency calibration.

Example::

    dopd profile --model dopd-tiny --device cpu --threads 2 --out tiny-cpu.json
    dopd simulate --calibration tiny-cpu.json ...      # or dopd perf --calibration tiny-cpu.json

The engine runs a grid of prefill, decode and mixed (prefill chunk + decodes) steps; the chunked
calibration form (``dopd.perf.chunked``) is fitted on most of them and checked on held-back
shapes. ``--out`` is a JSON file that ``--calibration`` accepts; it also records the fit's errors
and where it was measured. ``--steps-csv`` keeps the measured steps (a CSV ``--calibration`` also
accepts, refitting them).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

from dopd.cli.checks import check_output_dir
from dopd.errors import require

GRID_NAMES = ("small", "tiny", "serve")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "profile", help="measure the built-in engine's step times and fit a latency calibration",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--model", default="dopd-tiny", metavar="NAME|PATH",
                   help="built-in model name or HF checkpoint folder (default dopd-tiny)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--dtype", default=None, help="torch dtype (default: the model's)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch CPU threads, set explicitly (default 1)")
    p.add_argument("--out", required=True, metavar="FILE.json",
                   help="calibration file to write (its folder is created)")
    p.add_argument("--steps-csv", default=None, metavar="FILE.csv",
                   help="also write the measured steps")
    p.add_argument("--grid", default="small", choices=GRID_NAMES,
                   help="shape grid: small (default), tiny (quick) or serve (what dopd serve "
                   "measures at start)")
    p.add_argument("--repeats", type=int, default=None, metavar="N",
                   help="runs per shape, median taken (default: the grid's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt token ids")
    p.add_argument("--json", action="store_true", help="print the written file's content")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    require(out.suffix.lower() == ".json", f"--out must be a .json file, got {args.out!r}")
    require(not out.is_dir(), f"--out {args.out} is a folder; give a file name")
    check_output_dir(str(out.parent), "--out")  # the folder is made now, as for --out DIR
    if args.steps_csv is not None:
        csv_path = Path(args.steps_csv)
        require(csv_path.suffix.lower() == ".csv" and csv_path.parent.is_dir(),
                f"--steps-csv must be a .csv file in an existing folder, got {args.steps_csv!r}")
    require(args.threads >= 1, f"--threads must be >= 1, got {args.threads}")
    require(args.repeats is None or args.repeats >= 1, "--repeats must be >= 1")

    import dataclasses

    import torch

    from dopd.engine.engine_options import EngineOptions
    from dopd.engine.llm_engine import LLMEngine
    from dopd.engine.profiler import GRIDS, profile_document, profile_engine
    from dopd.perf.chunked_calibration import write_measurements

    grid = GRIDS[args.grid]
    if args.repeats is not None:
        grid = dataclasses.replace(grid, repeats=args.repeats)
    options = EngineOptions(threads=args.threads, detokenize=False, seed=args.seed)
    engine = LLMEngine.from_pretrained(args.model, options, device=args.device, dtype=args.dtype)
    result = profile_engine(engine, grid, seed=args.seed)
    content = profile_document(result, {
        "model": args.model, "device": args.device, "threads": args.threads,
        "torch": torch.__version__, "machine": platform.machine(), "grid": args.grid,
        "repeats": grid.repeats})
    out.write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
    if args.steps_csv is not None:
        write_measurements([*result.fit_steps, *result.held_back_steps], args.steps_csv)
    if args.json:
        print(json.dumps(content))
    else:
        print(f"wrote {out}: {result.fit.samples} steps fitted (median error "
              f"{100 * result.fit.median_rel_error:.1f} %), {len(result.held_back_steps)} held "
              f"back: median {100 * result.held_back_median:.1f} %, worst "
              f"{100 * result.held_back_worst:.1f} %")
    return 0
