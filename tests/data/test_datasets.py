"""The shipped datasets: checksums against the manifest, name resolution, and the names wired
into every loader, spec and command that takes a trace or a length file."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dopd.cli.main import main
from dopd.data import (
    DATA_DIR,
    MANIFEST,
    NOTICE,
    TRACES_DIR,
    Dataset,
    dataset_names,
    file_sha256,
    get_dataset,
    list_datasets,
    resolve_dataset,
    verify,
)
from dopd.errors import DopdError
from dopd.workload import LengthTable, Workload, load_lengths, load_trace, load_workload
from dopd.workload.spec import parse_arrival, parse_lengths

NAMES = ("azure-conv", "azure-code", "mooncake", "sharegpt")


def test_manifest_lists_the_four_public_datasets() -> None:
    assert dataset_names() == NAMES
    raw = json.loads(MANIFEST.read_text())
    fields = {"name", "kind", "file", "source", "licence", "citation", "rows", "sha256"}
    for entry in raw["datasets"]:
        assert fields <= set(entry)
        assert entry["kind"] in ("trace", "lengths")


@pytest.mark.parametrize("dataset", list_datasets(), ids=lambda d: d.name)
def test_every_shipped_file_matches_its_manifest_sha256(dataset: Dataset) -> None:
    assert dataset.path.is_file(), dataset.path
    assert file_sha256(dataset.path) == dataset.sha256
    assert verify(dataset)


@pytest.mark.parametrize("dataset", list_datasets(), ids=lambda d: d.name)
def test_row_counts_and_kinds_match_the_manifest(dataset: Dataset) -> None:
    loaded = load_trace(dataset.name, prefix=False)
    assert len(loaded.prompt_tokens) == dataset.rows
    assert isinstance(loaded, Workload if dataset.kind == "trace" else LengthTable)


def test_notice_states_every_licence_and_source() -> None:
    text = NOTICE.read_text()
    for dataset in list_datasets():
        assert dataset.name in text
        assert Path(dataset.file).relative_to("traces").as_posix() in text
    for licence in ("CC-BY-4.0", "Apache License 2.0", "research"):
        assert licence in text


def test_verify_detects_a_changed_file(tmp_path: Path) -> None:
    original = get_dataset("azure-code")
    copy = tmp_path / "traces" / "x.csv"
    copy.parent.mkdir()
    copy.write_bytes(original.path.read_bytes() + b"\n")
    changed = replace(original, file=str(copy))  # an absolute file replaces DATA_DIR
    assert changed.path == copy
    assert not verify(changed)


def test_resolve_names_paths_and_errors(tmp_path: Path) -> None:
    assert resolve_dataset("azure-conv") == DATA_DIR / get_dataset("azure-conv").file
    assert resolve_dataset("  MoonCake ") == get_dataset("mooncake").path
    assert resolve_dataset("mooncake").is_relative_to(TRACES_DIR)
    own = tmp_path / "mine.csv"
    own.write_text("arrival_s,prompt_tokens,output_tokens\n0,5,5\n")
    assert resolve_dataset(str(own)) == own
    assert resolve_dataset(own) == own
    with pytest.raises(DopdError, match=r"not found: .*nope.csv.*azure-conv, azure-code"):
        resolve_dataset(str(tmp_path / "nope.csv"))
    with pytest.raises(DopdError, match="not a file"):
        resolve_dataset(str(tmp_path))
    with pytest.raises(DopdError, match=r"unknown dataset 'conv' \(known: azure-conv"):
        get_dataset("conv")


def test_loaders_and_specs_accept_names() -> None:
    conv = load_workload("azure-conv")
    assert len(conv) == 19366 and conv.rate_rps == pytest.approx(5.53, abs=0.01)
    assert len(load_lengths("sharegpt")) == 30731
    with pytest.raises(DopdError, match="lengths-only"):
        load_workload("sharegpt")
    table = load_lengths("sharegpt")
    prompt, output = parse_lengths("empirical:path=sharegpt").sample(np.random.default_rng(0), 50)
    pairs = set(zip(table.prompt_tokens.tolist(), table.output_tokens.tolist(), strict=True))
    assert set(zip(prompt.tolist(), output.tolist(), strict=True)) <= pairs
    replay = parse_arrival("replay:path=azure-code,scale=2")
    times = replay.sample(np.random.default_rng(0), count=10)
    code = load_workload("azure-code")
    assert np.allclose(times, code.arrival_s[:10] / 2)


def test_data_list_verifies_every_checksum(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert name in out
    assert out.count("verified") == len(NAMES)
    assert "19,366" in out and "5.5 req/s" in out and "CC-BY-4.0" in out


def test_data_path_prints_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "path", "sharegpt"]) == 0
    assert Path(capsys.readouterr().out.strip()) == get_dataset("sharegpt").path


def test_unknown_names_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "path", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "known: azure-conv, azure-code, mooncake, sharegpt" in err
    assert main(["simulate", "--trace", "azure", "--requests", "10", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "azure-conv" in err


def test_cli_trace_options_take_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sim.json"
    assert main(["simulate", "--trace", "azure-code", "--requests", "60", "--policy",
                 "colocated", "--json", str(out), "-q"]) == 0
    assert json.loads(out.read_text())["colocated"]["requests"] == 60
    assert main(["simulate", "--lengths", "sharegpt", "--requests", "60", "--rate", "5",
                 "--policy", "colocated", "--json", str(out), "-q"]) == 0
    assert main(["forecast", "--trace", "mooncake", "--window", "120",
                 "--models", "constant"]) == 0
    assert "12031 requests" in capsys.readouterr().out
