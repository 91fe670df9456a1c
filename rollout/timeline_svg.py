"""The rollout timeline as an SVG (no plotting library): the share, and the lane against the
default lane over time, so a person sees when each step came and what the metrics did meanwhile.

Three panels over the same time axis: the share (a step line), the error rate of the lane and of
the default lane at the entry, their p99. Events (steps set, rollback) are vertical marks. Every
label is XML-escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import escape

__all__ = ["render_timeline"]

WIDTH, PANEL, GAP, LEFT, RIGHT, TOP = 900, 150, 40, 70, 30, 50
LANE_COLOR, BASE_COLOR, SHARE_COLOR = "#e45756", "#4c78a8", "#54a24b"


def _text(x: float, y: float, text: str, *, size: int = 11, anchor: str = "start") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}">{escape(text)}</text>'


def _panel(
    top: float,
    title: str,
    series: Sequence[tuple[str, str, list[tuple[float, float]]]],
    x1: float,
    unit: str,
    *,
    step: bool = False,
    top_value: float | None = None,
) -> list[str]:
    ys = [y for _, _, points in series for _, y in points]
    y1 = top_value or max(ys, default=0.0) * 1.1 or 1.0
    width = WIDTH - LEFT - RIGHT

    def px(x: float) -> float:
        return LEFT + x / x1 * width

    def py(y: float) -> float:
        return top + PANEL - y / y1 * PANEL

    out = [
        f'<rect x="{LEFT}" y="{top}" width="{width}" height="{PANEL}" fill="none" stroke="#999"/>',
        _text(LEFT, top - 6, title, size=12),
        _text(LEFT - 6, top + 4, f"{y1:.0f}{unit}" if y1 >= 10 else f"{y1:.2g}{unit}", size=10, anchor="end"),
        _text(LEFT - 6, top + PANEL + 4, f"0{unit}", size=10, anchor="end"),
    ]
    for i, (label, color, points) in enumerate(series):
        if not points:
            continue
        coords: list[str] = []
        for j, (x, y) in enumerate(points):
            if step and j:
                coords.append(f"{px(x):.1f},{py(points[j - 1][1]):.1f}")
            coords.append(f"{px(x):.1f},{py(y):.1f}")
        out.append(
            f'<polyline points="{" ".join(coords)}" fill="none" stroke="{color}" stroke-width="2">'
            f"<title>{escape(label)}</title></polyline>"
        )
        out.append(
            f'<rect x="{WIDTH - RIGHT - 160}" y="{top + 8 + 16 * i}" width="12" height="3" fill="{color}"/>'
        )
        out.append(_text(WIDTH - RIGHT - 144, top + 13 + 16 * i, label))
    return out


def render_timeline(record: dict[str, Any]) -> str:
    """The SVG of a rollout record (`rollout.record.Record`'s JSON document)."""
    points: list[dict[str, Any]] = record.get("points", [])
    events: list[dict[str, Any]] = record.get("events", [])
    lane, base = str(record.get("lane", "lane")), str(record.get("base", "base"))
    x1 = max([p["t"] for p in points] + [e["t"] for e in events] + [1.0])
    share = [
        (float(e["t"]), float(e["share"])) for e in events if e["event"] in ("set", "rollback", "resume")
    ]
    share += [(float(p["t"]), float(p["share"])) for p in points]
    share.sort()

    def series(name: str, scale: float) -> list[tuple[float, float]]:
        return [(float(p["t"]), float(p[name]) * scale) for p in points if p.get(name) is not None]

    height = TOP + 3 * (PANEL + GAP) + 30
    title = f"lane rollout: {lane} ({record.get('rule', '')}) in {record.get('config', '')}"
    outcome = record.get("outcome")
    if outcome:
        title += f" - {outcome}"
    out = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">'
        ),
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        _text(WIDTH / 2, 24, title, size=14, anchor="middle"),
    ]
    out += _panel(
        TOP,
        f"share of users in {lane} (%)",
        [("share", SHARE_COLOR, share)],
        x1,
        "%",
        step=True,
        top_value=100.0,
    )
    out += _panel(
        TOP + PANEL + GAP,
        "error rate at the entry (%)",
        [(lane, LANE_COLOR, series("error_rate", 100)), (base, BASE_COLOR, series("base_error_rate", 100))],
        x1,
        "%",
    )
    out += _panel(
        TOP + 2 * (PANEL + GAP),
        "p99 at the entry (ms)",
        [(lane, LANE_COLOR, series("p99", 1000)), (base, BASE_COLOR, series("base_p99", 1000))],
        x1,
        "ms",
    )
    bottom = TOP + 3 * PANEL + 2 * GAP
    for e in events:
        x = LEFT + float(e["t"]) / x1 * (WIDTH - LEFT - RIGHT)
        color = LANE_COLOR if e["event"] == "rollback" else "#bbb"
        if e["event"] in ("set", "rollback", "resume"):  # what the share became, above the mark
            out.append(_text(x + 3, TOP + 12, f"{e['share']}%", size=10))
        out.append(
            f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{bottom}" stroke="{color}" '
            f'stroke-dasharray="3 3"><title>{escape(str(e.get("message", "")))}</title></line>'
        )
    out.append(
        _text(LEFT + (WIDTH - LEFT - RIGHT) / 2, bottom + 22, f"seconds (0 - {x1:.0f})", anchor="middle")
    )
    for i in range(6):  # time ticks
        x = LEFT + i / 5 * (WIDTH - LEFT - RIGHT)
        out.append(_text(x, bottom + 12, f"{x1 * i / 5:.0f}", size=10, anchor="middle"))
    out.append("</svg>")
    return "\n".join(out) + "\n"
