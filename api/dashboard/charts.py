"""Charts as inline SVG, drawn in pure Python (no JavaScript, no dependency).

``line_chart`` draws series of (x, y) points on shared axes, with horizontal reference lines
(the release gate, the starting model's score) and point markers (deployable or not). Long
series are downsampled per pixel column (min and max of each column, in x order), so a job with
10,000 metric events still draws at most ~2 points per column and the shape of spikes survives.
Every piece of text is escaped here: the result is ``Markup`` built only from escaped parts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

Point = tuple[float, float]

WIDTH, HEIGHT = 640, 230
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 26, 34


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[Point]
    color: str = "#2458b3"
    width: float = 1.5
    dots: bool = False  # draw a dot on each point (few points: checkpoints)
    dashed: bool = False


@dataclass(frozen=True)
class HLine:
    y: float
    label: str
    color: str = "#b3261e"


@dataclass(frozen=True)
class Marker:
    x: float
    y: float
    ok: bool | None  # True: deployable (green), False: not (red), None: not gated (grey)
    label: str


def ema(points: Sequence[Point], alpha: float = 0.1) -> list[Point]:
    """Exponential moving average of y, debiased at the start (as TensorBoard/W&B smoothing)."""
    out: list[Point] = []
    avg, weight = 0.0, 0.0
    for x, y in points:
        avg = (1 - alpha) * avg + alpha * y
        weight = (1 - alpha) * weight + alpha
        out.append((x, avg / weight))
    return out


def downsample(points: Sequence[Point], buckets: int) -> list[Point]:
    """Keep the min and max point of each of ``buckets`` equal x-ranges (in x order)."""
    if len(points) <= 2 * buckets:
        return list(points)
    x0, x1 = points[0][0], points[-1][0]
    span = (x1 - x0) or 1.0
    out: list[Point] = []
    current, lo, hi = -1, (0.0, 0.0), (0.0, 0.0)
    for p in points:
        b = min(buckets - 1, int((p[0] - x0) / span * buckets))
        if b != current:
            if current >= 0:
                out.extend(sorted({lo, hi}))
            current, lo, hi = b, p, p
        else:
            lo = p if p[1] < lo[1] else lo
            hi = p if p[1] > hi[1] else hi
    out.extend(sorted({lo, hi}))
    return out


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _bounds(values: Iterable[float]) -> tuple[float, float]:
    items = [v for v in values if math.isfinite(v)]
    if not items:
        return 0.0, 1.0
    lo, hi = min(items), max(items)
    if hi == lo:
        pad = abs(lo) * 0.1 or 0.5
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.06
    return lo - pad, hi + pad


def line_chart(
    series: Sequence[Series],
    *,
    label: str,
    x_label: str = "step",
    hlines: Sequence[HLine] = (),
    markers: Sequence[Marker] = (),
    y_min: float | None = None,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> Markup:
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    buckets = max(8, plot_w // 2)
    drawn = [(s, downsample([p for p in s.points if math.isfinite(p[1])], buckets)) for s in series]
    xs = [p[0] for _, pts in drawn for p in pts] + [m.x for m in markers]
    ys = [p[1] for _, pts in drawn for p in pts] + [h.y for h in hlines] + [m.y for m in markers]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}">',
        f"<title>{escape(label)}</title>",
    ]
    if not xs:
        parts.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">No data yet</text></svg>'
        )
        return Markup("".join(parts))
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = _bounds(ys)
    if y_min is not None:
        y0 = min(y0, y_min)

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return TOP + plot_h - (y - y0) / (y1 - y0) * plot_h

    for t in nice_ticks(y0, y1):
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{sy(t):.1f}" y2="{sy(t):.1f}"/>'
            f'<text x="{LEFT - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>'
        )
    for t in nice_ticks(x0, x1, 6):
        parts.append(
            f'<text x="{sx(t):.1f}" y="{TOP + plot_h + 15}" text-anchor="middle">{_fmt(t)}</text>'
        )
    parts.append(
        f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}"/>'
        f'<line class="axis" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{TOP + plot_h}" '
        f'y2="{TOP + plot_h}"/>'
        f'<text x="{LEFT + plot_w / 2}" y="{height - 4}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    for h in hlines:
        y = sy(h.y)
        parts.append(
            f'<g class="hline"><title>{escape(h.label)}</title>'
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{escape(h.color)}" stroke-width="1.5" stroke-dasharray="6 4"/>'
            f'<text x="{LEFT + plot_w - 4}" y="{y - 4:.1f}" text-anchor="end" '
            f'fill="{escape(h.color)}">{escape(h.label)}</text></g>'
        )
    for s, pts in drawn:
        if not pts:
            continue
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        dash = ' stroke-dasharray="4 3"' if s.dashed else ""
        parts.append(
            f'<polyline fill="none" stroke="{escape(s.color)}" stroke-width="{s.width}"{dash} '
            f'points="{coords}"><title>{escape(s.name)}</title></polyline>'
        )
        if s.dots:
            for x, y in pts:
                parts.append(
                    f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{escape(s.color)}">'
                    f"<title>{escape(s.name)}: step {_fmt(x)}, {_fmt(y)}</title></circle>"
                )
    colors = {True: "#1e7a3c", False: "#b3261e", None: "#8a96a6"}
    for m in markers:
        parts.append(
            f'<circle class="marker" cx="{sx(m.x):.1f}" cy="{sy(m.y):.1f}" r="5" '
            f'fill="{colors[m.ok]}" stroke="#fff" stroke-width="1.5">'
            f"<title>{escape(m.label)}</title></circle>"
        )
    legend_x = LEFT
    parts.append('<g class="legend">')
    for s in series:
        parts.append(
            f'<line x1="{legend_x}" x2="{legend_x + 16}" y1="12" y2="12" '
            f'stroke="{escape(s.color)}" stroke-width="2"/>'
            f'<text x="{legend_x + 20}" y="16">{escape(s.name)}</text>'
        )
        legend_x += 28 + 7 * len(s.name)
    kinds = {m.ok for m in markers}
    for ok, name in ((True, "deployable"), (False, "not deployable"), (None, "not gated")):
        if ok in kinds:
            parts.append(
                f'<circle cx="{legend_x + 5}" cy="12" r="4" fill="{colors[ok]}"/>'
                f'<text x="{legend_x + 13}" y="16">{name}</text>'
            )
            legend_x += 22 + 7 * len(name)
    parts.append("</g></svg>")
    return Markup("".join(parts))
