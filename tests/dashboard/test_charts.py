"""The dashboard's inline SVG charts (no broker)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from ktasks.dashboard.charts import line_chart


def test_points_in_the_window_scale_to_the_largest_value():
    now = 1000.0
    svg = line_chart("T", [("a", [(now - 400, 99.0), (now - 200, 10.0), (now - 100, 20.0)])], now, 300.0)
    ET.fromstring(svg)     # well-formed
    points = re.search(r'points="([^"]+)"', svg).group(1).split()
    assert len(points) == 2                      # the one older than the window is left out
    ys = [float(p.split(",")[1]) for p in points]
    assert ys[1] < ys[0]                          # 20 is drawn above 10
    assert ">20.0<" in svg and "no data yet" not in svg


def test_empty_and_single_point_series_and_escaped_labels():
    empty = line_chart("<T>", [("a&b", [])], 10.0, 60.0)
    ET.fromstring(empty)
    assert "no data yet" in empty and "&lt;T&gt;" in empty and "a&amp;b" in empty
    one = line_chart("T", [("a", [(5.0, 3.0)])], 10.0, 60.0)
    assert "<circle" in one and "<polyline" not in one
