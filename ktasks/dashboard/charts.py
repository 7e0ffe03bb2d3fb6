"""Small line charts as inline SVG, drawn on the server: no JavaScript library, no build."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

__all__ = ["line_chart", "COLORS"]

COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")

Series = tuple[str, Sequence[tuple[float, float]]]


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.1f}"
    if value >= 0.001:
        return f"{value * 1000:.0f}m"
    return "0" if value == 0 else f"{value:.1g}"


def line_chart(title: str, series: Sequence[Series], now: float, window_s: float, unit: str = "",
               width: int = 420, height: int = 150) -> str:
    """An SVG chart of ``series`` (label, ``[(unix time, value), ...]``) over the last ``window_s``.

    The y axis runs from 0 to the largest value shown; points outside the
    window are left out. A chart with no points says so instead.
    """
    left, right, top, bottom = 44, 8, 22, 20
    plot_w, plot_h = width - left - right, height - top - bottom
    start = now - window_s
    shown = [(label, [(t, v) for t, v in points if t >= start]) for label, points in series]
    ymax = max((v for _, pts in shown for _, v in pts), default=0.0)
    parts = [f'<svg class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(title)}">',
             f'<text x="{left}" y="14" class="chart-title">{escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="chart-frame"/>']
    if ymax <= 0:
        ymax = 1.0
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" class="chart-axis">'
                     f'{escape(_fmt(ymax * frac) + unit)}</text>')
    parts.append(f'<text x="{left}" y="{height - 4}" class="chart-axis">-{window_s / 60:g} min</text>')
    parts.append(f'<text x="{left + plot_w}" y="{height - 4}" text-anchor="end" class="chart-axis">now</text>')
    if not any(pts for _, pts in shown):
        parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle" '
                     'class="chart-axis">no data yet</text>')
    for i, (label, pts) in enumerate(shown):
        color = COLORS[i % len(COLORS)]
        xy = [(left + plot_w * (t - start) / window_s, top + plot_h * (1 - v / ymax)) for t, v in sorted(pts)]
        if len(xy) > 1:
            coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{coords}">'
                         f'<title>{escape(label)}</title></polyline>')
        elif xy:    # one point makes no line: show it as a dot
            parts.append(f'<circle cx="{xy[0][0]:.1f}" cy="{xy[0][1]:.1f}" r="2.5" fill="{color}">'
                         f'<title>{escape(label)}</title></circle>')
        short = label if len(label) <= 28 else label[:12] + "…" + label[-15:]
        parts.append(f'<text x="{left + 6 + 110 * i}" y="{top + 12}" fill="{color}" class="chart-legend">'
                     f'{escape(short)}</text>')
    parts.append("</svg>")
    return "".join(parts)
