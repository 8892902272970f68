"""The SVG chart module: downsampling keeps extremes and bounds the size, smoothing, escaping."""

from __future__ import annotations

import math

from api.dashboard import charts


def test_downsample_bounds_points_and_keeps_extremes() -> None:
    points = [(float(i), math.sin(i / 50)) for i in range(10_000)]
    points[4321] = (4321.0, 5.0)  # a spike
    points[777] = (777.0, -5.0)
    out = charts.downsample(points, 300)
    assert len(out) <= 600
    assert (4321.0, 5.0) in out and (777.0, -5.0) in out
    assert [x for x, _ in out] == sorted(x for x, _ in out)
    assert out[0] == points[0] and out[-1][0] == points[-1][0]


def test_short_series_is_untouched() -> None:
    points = [(1.0, 2.0), (2.0, 3.0)]
    assert charts.downsample(points, 10) == points


def test_ema_is_debiased_and_smooth() -> None:
    smoothed = charts.ema([(0.0, 1.0), (1.0, 1.0), (2.0, 1.0)])
    assert all(abs(y - 1.0) < 1e-12 for _, y in smoothed)  # no pull toward 0 at the start
    noisy = [(float(i), float(i % 2)) for i in range(200)]
    tail = [y for _, y in charts.ema(noisy)[100:]]
    assert max(tail) - min(tail) < 0.2


def test_chart_size_is_bounded_for_long_series() -> None:
    points = [(float(i), 1 / (1 + i)) for i in range(10_000)]
    svg = charts.line_chart([charts.Series("loss", points)], label="loss")
    assert len(svg) < 20_000


def test_text_is_escaped() -> None:
    evil = "<script>alert(1)</script>"
    svg = charts.line_chart(
        [charts.Series(evil, [(0.0, 1.0), (1.0, 2.0)], dots=True)],
        label=evil,
        hlines=[charts.HLine(1.5, evil)],
        markers=[charts.Marker(1.0, 2.0, True, evil)],
    )
    assert evil not in svg
    assert "&lt;script&gt;" in svg


def test_gate_line_and_markers() -> None:
    svg = charts.line_chart(
        [charts.Series("harmful", [(10.0, 0.1), (20.0, 0.3)])],
        label="harmful",
        hlines=[charts.HLine(0.2, "release gate 0.200")],
        markers=[charts.Marker(10.0, 0.1, True, "ok"), charts.Marker(20.0, 0.3, False, "bad")],
    )
    assert "release gate 0.200" in svg and 'stroke-dasharray="6 4"' in svg
    assert svg.count('class="marker"') == 2
    assert "#1e7a3c" in svg and "#b3261e" in svg


def test_empty_chart_says_so() -> None:
    assert "No data yet" in charts.line_chart([charts.Series("x", [])], label="x")


def test_ticks_are_round() -> None:
    assert charts.nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
