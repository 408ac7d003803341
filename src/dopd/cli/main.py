"""Entry point of the ``dopd`` command: one sub-command per module in :data:`COMMANDS`.

Each command module defines ``add_parser(subparsers) -> argparse.ArgumentParser`` which sets
``func`` (``Callable[[argparse.Namespace], int]``) as a default. A :class:`DopdError` from a
command is printed as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from dopd import __version__
from dopd.errors import DopdError

COMMANDS: tuple[str, ...] = (
    "dopd.cli.perf_cmd",
    "dopd.cli.profile_cmd",
    "dopd.cli.forecast_cmd",
    "dopd.cli.simulate_cmd",
    "dopd.cli.plan_cmd",
    "dopd.cli.experiment_cmd",
    "dopd.cli.generate_cmd",
    "dopd.cli.bench_cmd",
    "dopd.cli.serve_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dopd",
        description="LLM serving with dynamic prefill/decode disaggregation (DOPD).",
    )
    parser.add_argument("--version", action="version", version=f"dopd {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DopdError as exc:
        print(f"dopd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
