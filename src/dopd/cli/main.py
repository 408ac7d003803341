"""Entry point of the ``dopd`` command: one sub-command per module in :data:`COMMANDS`.

Each command module defines ``add_parser(subparsers) -> argparse.ArgumentParser`` which sets
``func`` (``Callable[[argparse.Namespace], int]``) as a default. Every error the user can cause
(a bad option value, an unknown option, a :class:`DopdError` from a command, an output the
system refuses to write) is printed as ONE line on stderr, ``dopd COMMAND: error: ...``, with
exit code 2. Command modules import heavy libraries (torch, fastapi, ray) only inside ``run``,
so that options are parsed and checked before any of them loads.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

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
    "dopd.cli.data_cmd",
)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (no usage block) and exit code 2.

    Sub-command parsers inherit the class (``add_subparsers`` uses the parent's class).
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
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
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    prog = f"dopd {args.command}"
    if extra:
        print(f"{prog}: error: unrecognized arguments: {' '.join(extra)} (see {prog} -h)",
              file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except DopdError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output the system refused (disk full, permissions) after all
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{prog}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
