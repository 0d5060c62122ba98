"""The GUI's inline SVG line charts (tinyllm.gui.chart). No gradio needed."""

from __future__ import annotations

from tinyllm.gui.chart import PALETTE, line_chart, nice_ticks


def test_chart_draws_every_series_and_skips_bad_points():
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(1.37, 3.21, n=4) == [1.5, 2.0, 2.5, 3.0]
    svg = line_chart({"train": [(1, 3.0), (2, 2.0), (3, float("nan"))], "val": [(2, 2.5)], "<b>": []},
                     title="Loss")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 3  # val's single point still shows
    assert ">train</text>" in svg and ">val</text>" in svg and "&lt;b&gt;" in svg and "<b>" not in svg
    assert "no data yet" in line_chart({"train": []})


def test_ticks_and_colours_for_awkward_ranges():
    assert nice_ticks(float("nan"), 1.0) == [] and nice_ticks(0.0, float("inf")) == []
    assert nice_ticks(2.0, 2.0) == [2.0, 2.05, 2.1, 2.15, 2.2]  # a flat line still gets an axis
    assert nice_ticks(-3.0, 7.0) == [-2.0, 0.0, 2.0, 4.0, 6.0]
    svg = line_chart({"a": [(0, 1.0)], "b": [(0, 2.0)]})
    assert f'fill="{PALETTE[0]}"' in svg and f'fill="{PALETTE[1]}"' in svg  # colours by position
    recoloured = line_chart({"b": [(0, 2.0)]})
    assert f'fill="{PALETTE[0]}"' in recoloured and PALETTE[1] not in recoloured
    dense = line_chart({"train": [(i, float(i)) for i in range(100)]})
    assert "<circle" not in dense and dense.count("<polyline") == 1  # no dots on a long curve
