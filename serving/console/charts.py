"""Charts for the console, drawn on the server as inline SVG: nothing to load, nothing to run in
the browser, readable by screen readers (each chart has a title and its numbers in a table beside it)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 28
# Colour-blind-safe (Okabe-Ito), one per series.
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000")


def _fmt(value: float, percent: bool) -> str:
    if percent:
        return f"{value:.1%}"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def line_chart(title: str, labels: Sequence[str], series: dict[str, Sequence[float | None]], percent: bool = False,
               bars: bool = False) -> str:
    """An SVG chart of ``series`` (name -> one value per label; ``None`` leaves a gap) over ``labels``
    (days or versions), as lines, or as stacked bars with ``bars``."""
    if not labels or not series:
        return f'<p class="empty">{escape(title)}: no data yet.</p>'
    n = len(labels)
    stacked = [sum(v[i] or 0 for v in series.values()) for i in range(n)] if bars else []
    values = stacked or [v for s in series.values() for v in s if v is not None]
    top = max(values, default=0) or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + (plot_w * (i + 0.5) / n)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / top)

    parts = [f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" class="chart">',
             f"<title>{escape(title)}</title>",
             f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" class="axis"/>',
             f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end" class="tick">{_fmt(top, percent)}</text>',
             f'<text x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end" class="tick">0</text>']
    step = max(1, n // 6)
    for i in range(0, n, step):
        parts.append(f'<text x="{x(i):.1f}" y="{HEIGHT - 8}" text-anchor="middle" class="tick">{escape(labels[i])}</text>')
    if bars:
        width = max(1.0, plot_w / n * 0.8)
        base = [0.0] * n
        for (name, vals), colour in zip(series.items(), COLOURS, strict=False):
            for i, v in enumerate(vals):
                if v:
                    parts.append(f'<rect x="{x(i) - width / 2:.1f}" y="{y(base[i] + v):.1f}" width="{width:.1f}" '
                                 f'height="{y(base[i]) - y(base[i] + v):.1f}" fill="{colour}">'
                                 f"<title>{escape(labels[i])} {escape(name)}: {_fmt(v, percent)}</title></rect>")
                    base[i] += v
    else:
        for (name, vals), colour in zip(series.items(), COLOURS, strict=False):
            points = [(x(i), y(v)) for i, v in enumerate(vals) if v is not None]
            if len(points) > 1:
                path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
                parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
            for (px, py), (i, v) in zip(points, [(i, v) for i, v in enumerate(vals) if v is not None], strict=True):
                parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}">'
                             f"<title>{escape(labels[i])} {escape(name)}: {_fmt(v, percent)}</title></circle>")
    parts.append("</svg>")
    legend = "".join(f'<li><span class="swatch" style="background:{c}"></span>{escape(name)}</li>'
                     for name, c in zip(series, COLOURS, strict=False))
    head = "".join(f"<th scope=col>{escape(name)}</th>" for name in series)
    rows = "".join(f"<tr><th scope=row>{escape(label)}</th>" + "".join(
        f"<td>{'' if s[i] is None else _fmt(s[i], percent)}</td>" for s in series.values()) + "</tr>"
                   for i, label in enumerate(labels))
    return (f'<figure>{"".join(parts)}<ul class="legend">{legend}</ul>'
            f"<details><summary>{escape(title)} as a table</summary><div class=scroll><table><tr><th></th>{head}</tr>"
            f"{rows}</table></div></details></figure>")
