"""Public request traces and length tables shipped with dopd, addressable by name.

Every option or spec that takes a trace or a length file (``--trace``, ``--lengths``,
``empirical:path=``, ``replay:path=``, the experiment suites) accepts a dataset name from
:func:`list_datasets` (``azure-conv``, ``azure-code``, ``mooncake``, ``sharegpt``) or a path.
The files are unmodified copies of their upstream files; ``manifest.json`` records each one's
source, licence, citation, row count and sha256, and ``NOTICE.md`` states the licences.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dopd.errors import DopdError

DATA_DIR = Path(__file__).resolve().parent
"""The folder of this package: ``manifest.json``, ``NOTICE.md`` and ``traces/``."""

TRACES_DIR = DATA_DIR / "traces"
"""Root of the shipped files; a suite's relative trace paths resolve against it by default."""

MANIFEST = DATA_DIR / "manifest.json"
NOTICE = DATA_DIR / "NOTICE.md"


@dataclass(frozen=True)
class Dataset:
    """One shipped file. ``kind`` is ``trace`` (arrival times and lengths) or ``lengths``
    (prompt/output lengths only); ``file`` is relative to :data:`DATA_DIR`; ``rows`` counts
    requests (data rows, header excluded)."""

    name: str
    kind: Literal["trace", "lengths"]
    file: str
    description: str
    source: str
    licence: str
    citation: str
    rows: int
    sha256: str

    @property
    def path(self) -> Path:
        """Absolute path of the shipped file."""
        return DATA_DIR / self.file


@functools.cache
def list_datasets() -> tuple[Dataset, ...]:
    """Every shipped dataset, in manifest order."""
    raw = json.loads(MANIFEST.read_text(encoding="utf-8"))
    return tuple(Dataset(**entry) for entry in raw["datasets"])


def dataset_names() -> tuple[str, ...]:
    """The names :func:`resolve_dataset` accepts."""
    return tuple(d.name for d in list_datasets())


def get_dataset(name: str) -> Dataset:
    """The dataset called ``name`` (case-insensitive); DopdError naming the known ones."""
    for dataset in list_datasets():
        if dataset.name == name.strip().lower():
            return dataset
    raise DopdError(f"unknown dataset {name!r} (known: {', '.join(dataset_names())})")


def is_dataset_name(text: str) -> bool:
    """Whether ``text`` is the name of a shipped dataset."""
    return text.strip().lower() in dataset_names()


def resolve_dataset(name_or_path: str | Path) -> Path:
    """The file a trace or length option names: a shipped dataset's path for a known name
    (names win over same-named files; write ``./NAME`` for the file), else ``name_or_path``
    itself when it is an existing file. DopdError, naming the known datasets, otherwise."""
    text = str(name_or_path)
    if is_dataset_name(text):
        return get_dataset(text).path
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.exists():
        raise DopdError(f"not a file: {text}")
    raise DopdError(f"file not found: {text} (nor is it a dataset name: "
                    f"{', '.join(dataset_names())})")


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(dataset: Dataset) -> bool:
    """Whether the shipped file exists and matches the manifest's sha256."""
    return dataset.path.is_file() and file_sha256(dataset.path) == dataset.sha256


__all__ = [
    "DATA_DIR",
    "TRACES_DIR",
    "Dataset",
    "dataset_names",
    "file_sha256",
    "get_dataset",
    "is_dataset_name",
    "list_datasets",
    "resolve_dataset",
    "verify",
]
