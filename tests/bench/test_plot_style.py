"""Policy styles: dopd stands out and goes last; no two other policies look alike; legends
name coinciding curves; markers of coinciding curves fall at different places."""

from __future__ import annotations

import numpy as np

from dopd.bench.plot_style import (
    DOPD_STYLE,
    draw_order,
    is_proposed,
    marker_every,
    policy_styles,
    same_as_labels,
)


def test_dopd_has_its_own_style_and_the_others_differ() -> None:
    names = ["colocated", "static:best", "dopd", "reactive", "sla-planner", "dopd:noforecast",
             "dopd:nolength", "dopd:novariance", "dopd:hybrid", "static:4:4"]
    styles = policy_styles(names)
    assert styles["dopd"] == DOPD_STYLE
    others = [styles[n] for n in names if n != "dopd"]
    assert len({(s.color, s.marker) for s in others}) == len(others)
    assert all(s.color != DOPD_STYLE.color and s.linestyle != "-" for s in others)
    assert all(DOPD_STYLE.zorder > s.zorder and DOPD_STYLE.linewidth > s.linewidth
               for s in others)


def test_only_dopd_itself_is_the_proposed_policy() -> None:
    assert is_proposed("dopd") and is_proposed(" dopd ")
    assert not is_proposed("dopd:noforecast") and not is_proposed("colocated")


def test_draw_order_puts_dopd_last() -> None:
    assert draw_order(["dopd", "colocated", "static:best"]) == ["colocated", "static:best",
                                                                "dopd"]
    assert draw_order(["colocated"]) == ["colocated"]


def test_same_as_labels_name_the_curve_drawn_over() -> None:
    a, b = np.array([1.0, 2.0]), np.array([0.5, 1.0])
    curves = {"colocated": [a, b], "static:best": [a, b + 0.1], "dopd": [a, b],
              "reactive": [a, b + 0.1]}
    assert same_as_labels(curves) == {"colocated": "colocated (same as dopd)",
                                      "static:best": "static:best",
                                      "dopd": "dopd",
                                      "reactive": "reactive (same as static:best)"}
    # different lengths or NaN patterns are different curves
    assert same_as_labels({"x": [a], "y": [np.array([1.0])]}) == {"x": "x", "y": "y"}
    nan = np.array([np.nan, 1.0])
    assert same_as_labels({"x": [nan], "y": [nan]})["y"] == "y (same as x)"


def test_marker_every_shifts_markers_of_coinciding_curves() -> None:
    assert marker_every(10, 0) is None
    first, second = marker_every(400, 0), marker_every(400, 1)
    assert first is not None and second is not None
    assert first[1] == second[1] == 50 and first[0] != second[0]
