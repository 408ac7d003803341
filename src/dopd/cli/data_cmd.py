"""``dopd data``: the traces and length tables shipped with dopd (list them, print a path)."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from dopd.data import NOTICE, Dataset, get_dataset, list_datasets, verify

EPILOG = """\
examples:
  dopd data list
  dopd data path azure-conv
  dopd simulate --trace azure-conv --duration 60
"""


def _summary(dataset: Dataset) -> dict[str, Any]:
    """The manifest entry plus what the file itself says: rows, span, rate, checksum."""
    from dopd.workload import Workload, load_trace  # numpy parsing: only when listing

    ok = verify(dataset)
    loaded = load_trace(dataset.path, prefix=False)
    row: dict[str, Any] = {
        "name": dataset.name, "kind": dataset.kind, "rows": len(loaded.prompt_tokens),
        "span_s": None, "rate_rps": None, "licence": dataset.licence,
        "sha256_ok": ok, "path": str(dataset.path), "source": dataset.source,
        "citation": dataset.citation,
    }
    if isinstance(loaded, Workload):
        row["span_s"] = float(loaded.arrival_s[-1] - loaded.arrival_s[0])
        row["rate_rps"] = float(loaded.rate_rps)
    return row


def _list(args: argparse.Namespace) -> int:
    rows = [_summary(d) for d in list_datasets()]
    table = Table(title="datasets shipped with dopd (use the name wherever a trace or length "
                  "file is asked for)", title_justify="left")
    for column, justify in (("name", "left"), ("kind", "left"), ("rows", "right"),
                            ("span / rate", "right"), ("licence", "left"),
                            ("sha256", "left")):
        table.add_column(column, justify=justify)
    for row in rows:
        span = ("-" if row["span_s"] is None
                else f"{row['span_s'] / 60:.0f} min, {row['rate_rps']:.1f} req/s")
        licence = row["licence"].split(" (")[0].split(";")[0]
        check = "[green]verified[/]" if row["sha256_ok"] else "[red]MISMATCH[/]"
        table.add_row(row["name"], row["kind"], f"{row['rows']:,}", span, licence, check)
    console = Console()
    console.print(table)
    console.print(f"sources, licences and citations: {NOTICE}", highlight=False)
    return 0 if all(r["sha256_ok"] for r in rows) else 1


def _path(args: argparse.Namespace) -> int:
    print(get_dataset(args.name).path)
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``dopd data``."""
    p = subparsers.add_parser(
        "data", help="list the traces and length tables shipped with dopd",
        description="Public request traces and length tables ship with dopd and can be named "
        "wherever a trace or length file is asked for (--trace azure-conv, --lengths sharegpt, "
        "empirical:path=sharegpt). 'list' verifies each file's sha256 against the manifest "
        "(exit 1 on a mismatch).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    lst = sub.add_parser("list", help="name, kind, rows, span and rate, licence, checksum")
    lst.set_defaults(func=_list)
    path = sub.add_parser("path", help="print the file of a dataset")
    path.add_argument("name", help="dataset name (see dopd data list)")
    path.set_defaults(func=_path)
    return p
