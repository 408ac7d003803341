"""Definition of done: the legacy2023 roofline reproduces DistServe's published A100 fits."""

from __future__ import annotations

import dataclasses

from dopd.perf import fidelity_report, get_preset
from dopd.perf.anchors import anchor_fits
from dopd.perf.fidelity import fit_errors


def test_legacy_roofline_matches_every_distserve_fit() -> None:
    report = fidelity_report("legacy2023")
    fits = {f.name for f in anchor_fits("distserve")}
    assert {row.fit for row in report.rows} == fits and len(fits) == 7
    for row in report.rows:
        print(f"{row.fit}: median {100 * row.median:.1f} %, worst {100 * row.worst:.1f} %")
        assert row.points == 20 + 27
        assert row.median <= 0.10, row
        assert row.worst <= 0.35, row
    print(f"all: median {100 * report.median:.1f} %, worst {100 * report.worst:.1f} %")
    assert report.median <= 0.10 and report.worst <= 0.35


def test_fidelity_check_can_fail() -> None:
    # the same physics with a modern engine's constants, or at half the GEMM efficiency, misses
    modern = fidelity_report("modern")
    assert max(row.median for row in modern.rows) > 0.10
    slow = dataclasses.replace(get_preset("legacy2023"), mfu=0.42)
    assert max(row.worst for row in fidelity_report(slow).rows) > 0.35


def test_errors_are_signed_and_cover_the_grid() -> None:
    fit = anchor_fits("distserve")[0]
    prefill, decode = fit_errors(fit, "legacy2023")
    assert len(prefill) == 20 and len(decode) == 27
    assert any(e > 0 for e in prefill + decode) and any(e < 0 for e in prefill + decode)
