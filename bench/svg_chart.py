"""A small SVG bar chart of the data-plane benchmark, drawn from the numbers (no plotting library).

Left panel: requests per second per topology. Right panel: p50 and p99 latency per topology.
Below: the bounded-memory result of the large upload. Every label is XML-escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

__all__ = ["Bar", "render_svg"]

WIDTH, HEIGHT = 980, 470
PANEL_W, PANEL_H, TOP = 420, 280, 70
COLORS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2")


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    rps: float
    p50_ms: float
    p99_ms: float


def _text(x: float, y: float, text: str, *, size: int = 12, anchor: str = "start", weight: str = "normal",
          rotate: float | None = None) -> str:
    turn = f' transform="rotate({rotate:g} {x:.1f} {y:.1f})"' if rotate is not None else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" font-weight="{weight}"'
            f'{turn}>{escape(text)}</text>')


def _nice_max(value: float) -> float:
    """A round axis maximum a little above *value* (1, 2 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    scale = 10 ** len(str(int(value))) / 10 if value >= 1 else 0.1
    for step in (1, 2, 5, 10):
        if step * scale >= value * 1.05:
            return step * scale
    return 10 * scale


def _axis(x0: float, title: str, top: float, unit: str) -> list[str]:
    out = [_text(x0 + PANEL_W / 2, TOP - 25, title, size=14, anchor="middle", weight="bold")]
    for i in range(5):
        value = top * i / 4
        y = TOP + PANEL_H - PANEL_H * i / 4
        out.append(f'<line x1="{x0:.1f}" y1="{y:.1f}" x2="{x0 + PANEL_W:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(_text(x0 - 6, y + 4, f"{value:,.0f}" if top >= 20 else f"{value:.1f}", size=10, anchor="end"))
    out.append(_text(x0 - 45, TOP + PANEL_H / 2, unit, size=11, anchor="middle", rotate=-90))
    return out


def _panel(x0: float, title: str, unit: str, series: Sequence[tuple[str, Sequence[float]]],
           labels: Sequence[str]) -> list[str]:
    top = _nice_max(max((v for _, values in series for v in values), default=1.0))
    out = _axis(x0, title, top, unit)
    group_w = PANEL_W / max(len(labels), 1)
    bar_w = group_w * 0.7 / max(len(series), 1)
    for g, label in enumerate(labels):
        gx = x0 + g * group_w + group_w * 0.15
        for s, (name, values) in enumerate(series):
            h = PANEL_H * values[g] / top
            x, y = gx + s * bar_w, TOP + PANEL_H - h
            color = COLORS[g % len(COLORS)] if len(series) == 1 else COLORS[s % len(COLORS)]
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" fill="{color}">'
                       f'<title>{escape(f"{label} {name}: {values[g]:,.2f} {unit}")}</title></rect>')
            out.append(_text(x + bar_w / 2 - 1, y - 4, f"{values[g]:,.0f}" if values[g] >= 20 else f"{values[g]:.1f}",
                             size=10, anchor="middle"))
        out.append(_text(gx + group_w * 0.35, TOP + PANEL_H + 16, label, size=11, anchor="middle"))
    if len(series) > 1:
        for s, (name, _) in enumerate(series):
            lx = x0 + PANEL_W - 110 + s * 55
            out.append(f'<rect x="{lx:.1f}" y="{TOP - 14}" width="10" height="10" fill="{COLORS[s]}"/>')
            out.append(_text(lx + 14, TOP - 5, name, size=11))
    return out


def render_svg(title: str, bars: Sequence[Bar], notes: Sequence[str]) -> str:
    """The whole chart as an SVG document; *notes* are printed below the panels, one per line."""
    labels = [b.label for b in bars]
    height = max(HEIGHT, TOP + PANEL_H + 50 + 18 * len(notes))  # room for every note
    parts = [
        (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">'),
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        _text(WIDTH / 2, 22, title, size=15, anchor="middle", weight="bold"),
        *_panel(70, "Throughput (higher is better)", "requests/s", [("req/s", [b.rps for b in bars])], labels),
        *_panel(540, "Latency (lower is better)", "ms",
                [("p50", [b.p50_ms for b in bars]), ("p99", [b.p99_ms for b in bars])], labels),
    ]
    for i, note in enumerate(notes):
        parts.append(_text(70, TOP + PANEL_H + 50 + 18 * i, note, size=12))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
