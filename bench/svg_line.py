"""A small SVG line chart (no plotting library): one or more series of (x, y) points over time.

Drawn for the soak's RSS curve (`bench/soak.py`), so a person sees at a glance whether memory
stays flat; horizontal reference lines (a target, say) are dashed, and an optional fitted segment
is drawn over the part of the x axis it was fitted on. Every label is XML-escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

__all__ = ["Line", "Reference", "render_line_chart"]

WIDTH, HEIGHT = 900, 460
LEFT, RIGHT, TOP, BOTTOM = 70, 30, 50, 90  # margins around the plot area
COLORS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2")


@dataclass(frozen=True, slots=True)
class Line:
    label: str
    points: tuple[tuple[float, float], ...]  # (x, y), x ascending
    dashed: bool = False


@dataclass(frozen=True, slots=True)
class Reference:
    label: str
    y: float


def _nice_step(span: float) -> float:
    """A round grid step (1, 2 or 5 times a power of ten) giving about five lines over *span*."""
    raw = span / 5 * 0.999 if span > 0 else 1.0  # 0.999: a span of 10.0002 still gets a step of 2
    power = 10.0 ** len(str(int(raw))) / 10 if raw >= 1 else 10.0 ** -len(str(int(1 / raw)))
    for factor in (1, 2, 5, 10):
        if factor * power >= raw:
            return factor * power
    return 10 * power


def _text(x: float, y: float, text: str, *, size: int = 12, anchor: str = "start", weight: str = "normal",
          rotate: float | None = None) -> str:
    turn = f' transform="rotate({rotate:g} {x:.1f} {y:.1f})"' if rotate is not None else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" font-weight="{weight}"'
            f"{turn}>{escape(text)}</text>")


def render_line_chart(title: str, lines: Sequence[Line], *, x_label: str, y_label: str,
                      references: Sequence[Reference] = (), notes: Sequence[str] = ()) -> str:
    """The chart as an SVG document; the y axis starts at 0 so flat looks flat, not magnified."""
    xs = [x for line in lines for x, _ in line.points] or [0.0, 1.0]
    ys = [y for line in lines for _, y in line.points] + [r.y for r in references]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1e-9)
    y_step = _nice_step(max(ys, default=1.0))
    y1 = y_step * (int(max(ys, default=1.0) / y_step) + 1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return TOP + plot_h - y / y1 * plot_h

    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">'),
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           _text(WIDTH / 2, 24, title, size=15, anchor="middle", weight="bold")]
    y = 0.0
    while y <= y1 + 1e-9:
        out.append(f'<line x1="{LEFT}" y1="{py(y):.1f}" x2="{LEFT + plot_w}" y2="{py(y):.1f}" stroke="#ddd"/>')
        out.append(_text(LEFT - 6, py(y) + 4, f"{round(y, 6):g}", size=10, anchor="end"))
        y += y_step
    x_step = _nice_step(x1 - x0)
    tick = math.ceil(x0 / x_step - 1e-9)  # ticks at round multiples of the step
    while tick * x_step <= x1 + 1e-9:
        x = tick * x_step
        out.append(f'<line x1="{px(x):.1f}" y1="{TOP + plot_h}" x2="{px(x):.1f}" y2="{TOP + plot_h + 4}" stroke="#999"/>')
        out.append(_text(px(x), TOP + plot_h + 16, f"{round(x, 6):g}", size=10, anchor="middle"))
        tick += 1
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>')
    out.append(_text(LEFT + plot_w / 2, TOP + plot_h + 34, x_label, size=11, anchor="middle"))
    out.append(_text(LEFT - 48, TOP + plot_h / 2, y_label, size=11, anchor="middle", rotate=-90))
    for ref in references:
        out.append(f'<line x1="{LEFT}" y1="{py(ref.y):.1f}" x2="{LEFT + plot_w}" y2="{py(ref.y):.1f}" '
                   f'stroke="#e45756" stroke-dasharray="6 4"/>')
        out.append(_text(LEFT + plot_w - 4, py(ref.y) - 5, ref.label, size=11, anchor="end"))
    for i, line in enumerate(lines):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in line.points)
        dash = ' stroke-dasharray="4 3"' if line.dashed else ""
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}>'
                   f"<title>{escape(line.label)}</title></polyline>")
        out.append(f'<rect x="{LEFT + 10}" y="{TOP + 10 + 18 * i}" width="12" height="3" fill="{color}"/>')
        out.append(_text(LEFT + 28, TOP + 15 + 18 * i, line.label, size=11))
    for i, note in enumerate(notes):
        out.append(_text(LEFT, TOP + plot_h + 56 + 16 * i, note, size=11))
    out.append("</svg>")
    return "\n".join(out) + "\n"
