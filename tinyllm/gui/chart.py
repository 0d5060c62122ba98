"""Small line charts as inline SVG (no gradio, no plotting library).

The GUI draws its loss and speed curves with these rather than with Gradio's plot component, whose chart
fixes its set of series when first drawn: a series that appears later (val after the first evaluation,
another run added to a comparison) would never be shown. An SVG string is also trivially testable.
"""

from __future__ import annotations

import math
from html import escape

PALETTE = ("#2563eb", "#ea580c", "#16a34a", "#dc2626", "#9333ea", "#0891b2", "#ca8a04", "#db2777", "#4b5563",
           "#65a30d")


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0) * 0.1
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _fmt(v: float) -> str:
    if abs(v) >= 10_000:
        return f"{v / 1000:,.0f}k"
    if abs(v) >= 100 or v == int(v):
        return f"{v:,.0f}"
    return f"{v:.3g}"


def line_chart(series: dict[str, list[tuple[float, float]]], title: str = "", x_label: str = "step",
               y_label: str = "", width: int = 640, height: int = 300, empty: str = "no data yet") -> str:
    """An SVG chart with one line (and dots, so single points show) per series, axes, ticks and a legend.

    Points with a non-finite value are skipped. Series keep their colour by position in `series`.
    """
    pts = {name: [(float(x), float(y)) for x, y in p if math.isfinite(x) and math.isfinite(y)]
           for name, p in series.items()}
    all_pts = [xy for p in pts.values() for xy in p]
    left, right, top, bottom = 64, 16, 34, 52 + 18 * math.ceil(len(pts) / 4)
    w, h = width - left - right, height - top - bottom
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
           f'style="max-width:{width}px;font:12px sans-serif" role="img" aria-label="{escape(title)}">',
           f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">{escape(title)}</text>']
    if not all_pts:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="#888">{escape(empty)}</text>')
        return "".join(out) + "</svg>"
    xs, ys = [x for x, _ in all_pts], [y for _, y in all_pts]
    xt, yt = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    x0, x1 = min(xt[0], min(xs)), max(xt[-1], max(xs))
    y0, y1 = min(yt[0], min(ys)), max(yt[-1], max(ys))
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * w

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * h

    for t in yt:
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#e5e7eb"/>'
                   f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end" fill="#555">{_fmt(t)}</text>')
    for t in xt:
        out.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top}" y2="{top + h}" stroke="#f0f0f0"/>'
                   f'<text x="{sx(t):.1f}" y="{top + h + 16}" text-anchor="middle" fill="#555">{_fmt(t)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#d1d5db"/>'
               f'<text x="{left + w / 2}" y="{top + h + 34}" text-anchor="middle" fill="#333">{escape(x_label)}</text>'
               f'<text transform="translate(14 {top + h / 2}) rotate(-90)" text-anchor="middle" fill="#333">'
               f'{escape(y_label)}</text>')
    for i, (name, p) in enumerate(pts.items()):
        color = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sorted(p))
        if len(p) > 1:
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        if len(p) <= 60:
            out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>' for x, y in p]
        lx, ly = left + (i % 4) * (w / 4), top + h + 52 + 18 * (i // 4)
        out.append(f'<rect x="{lx:.1f}" y="{ly - 9}" width="12" height="4" fill="{color}"/>'
                   f'<text x="{lx + 18:.1f}" y="{ly - 3}" fill="#333">{escape(name)}</text>')
    return "".join(out) + "</svg>"
