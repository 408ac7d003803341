"""Checks every command runs before its work: outputs it will write and counts it can handle.

Each check raises :class:`DopdError` with a one-line message (the CLI prints it and exits 2), so
a run that could not save its results, or would not finish, fails in a second instead of after
minutes of work. The JSON option of every command follows :func:`add_json_option`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from dopd.errors import DopdError, require

STDOUT = "-"
"""``--json`` target meaning standard output."""

MAX_SIM_INSTANCES = 1024
"""Most instances ``dopd simulate`` accepts: simulation time grows with the pool (1024
instances: about 6 s for colocated and dopd on the default workload on 2 cores), and the
paper's pools are 8 to 64."""

MAX_SEARCH_INSTANCES = 128
"""Most instances when a policy searches every split in hindsight (``static:best``): N-1
simulations of N instances each (64 instances: 8 s, 256: 100 s for 200 requests on 2 cores)."""

MAX_PLAN_INSTANCES = 1024
"""Most instances ``dopd plan`` accepts (fixed pool or ``--max-instances``): it predicts every
split, which takes about 2 s for 1024 instances and 10 s for 4096 on 2 cores."""


def add_json_option(parser: argparse.ArgumentParser | Any, what: str = "the results") -> None:
    """``--json [PATH]``, the same in every command: ``--json`` alone (or ``--json -``) prints
    ``what`` as one JSON object on stdout instead of the human-readable output; ``--json PATH``
    writes it to PATH (whose folder must exist) as well."""
    parser.add_argument(
        "--json", nargs="?", const=STDOUT, default=None, metavar="PATH",
        help=f"{what} as JSON: --json alone or --json - prints one JSON object on stdout "
        "instead of the tables; --json PATH writes it to PATH (its folder must exist)")


def json_to_stdout(value: str | None) -> bool:
    """Whether a ``--json`` value sends the JSON to stdout."""
    return value == STDOUT


def check_output_file(value: str | None, option: str = "--json") -> Path | None:
    """The file ``value`` names, checked writable without creating anything: its folder must
    exist (no folder is created) and it must not be a folder. None for None or stdout."""
    if value is None or value == STDOUT:
        return None
    require(value.strip() != "", f"{option} needs a file name")
    path = Path(value)
    parent = path.parent
    require(parent.is_dir(), f"{option} {value}: folder {parent} does not exist")
    require(not path.is_dir(), f"{option} {value} is a folder; give a file name")
    if path.exists():
        require(os.access(path, os.W_OK), f"{option} {value}: file is not writable")
    else:
        _probe(parent, option, value)
    return path


def check_output_dir(value: str, option: str = "--out") -> Path:
    """The folder ``value`` names, created now (with its parents) and probed with a temporary
    file, so that a run fails before its work when it could not save its results."""
    path = Path(value)
    require(value.strip() != "", f"{option} needs a folder name")
    require(not path.exists() or path.is_dir(), f"{option} {value} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DopdError(f"{option} {value}: cannot create the folder "
                        f"({exc.strerror or exc})") from None
    _probe(path, option, value)
    return path


def _probe(folder: Path, option: str, value: str) -> None:
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".dopd-probe-"):
            pass
    except OSError as exc:
        raise DopdError(f"{option} {value}: cannot write in {folder} "
                        f"({exc.strerror or exc})") from None


def emit_json(value: str, data: Any) -> Path | None:
    """Print ``data`` (strict JSON) on stdout when ``value`` is ``-``, else write it to the
    file ``value`` (indented; checked before by :func:`check_output_file`) and return its path."""
    from dopd.bench.report import to_jsonable

    if value == STDOUT:
        sys.stdout.write(json.dumps(to_jsonable(data), allow_nan=False) + "\n")
        sys.stdout.flush()
        return None
    path = Path(value)
    path.write_text(json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n")
    return path


def check_count(value: int | None, option: str, most: int, reason: str, least: int = 1) -> None:
    """``value`` (None: not given) within ``[least, most]``; the error states ``reason``."""
    if value is None:
        return
    require(value >= least, f"{option} must be >= {least}, got {value}")
    require(value <= most, f"{option} {value} is over the limit of {most}: {reason}")
