"""The lane verdict as HTML: the Lanes page, the section at the top of locust's HTML report, the tab link.

Rendered with Jinja2 (it ships with locust's Flask) from the ``*.html`` templates beside this module,
with autoescaping on, so service names, lanes and finding messages from a config or the network are
always escaped. The view data (rows, SVG bar segments, the verdict) is computed here in Python; the
templates only lay it out. Pure: values in, strings out (and `inject_html` edits one file).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final

import jinja2
from markupsafe import Markup

from lane.core.config import LaneConfig

from .personas import Persona
from .propagation import Propagation
from .report import Phase, check_items, fmt_counts, matrix_rows, persona_rows, verdict_text
from .stats import LaneStats
from .summary import Summary

__all__ = ["SECTION_ID", "Phase", "inject_html", "lanes_link", "render_html_section", "render_page"]

SECTION_ID: Final = "lane-report"
_PALETTE: Final = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d")
_MARKER: Final = "<!-- lane-report -->"
_END_MARKER: Final = "<!-- /lane-report -->"
_BAR_WIDTH: Final = 220


@cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )


@dataclass(frozen=True, slots=True)
class _Segment:
    x: float
    width: float
    color: str
    title: str


def _color(lane: str, lanes: Sequence[str]) -> str:
    return _PALETTE[lanes.index(lane) % len(_PALETTE)] if lane in lanes else "#999999"


def _bar(served: Mapping[str, int], lanes: Sequence[str]) -> list[_Segment]:
    total = sum(served.values()) or 1
    x, out = 0.0, []
    for lane, n in sorted(served.items()):
        width = _BAR_WIDTH * n / total
        out.append(_Segment(round(x, 1), round(width, 1), _color(lane, lanes), f"{lane}: {n}"))
        x += width
    return out


def _status(summary: Summary, stats: LaneStats, phase: Phase) -> str:
    if phase != "ended":
        return "fail" if stats.lane_failures else "running"
    return "pass" if summary.ok else "fail"


def render_html_section(summary: Summary, stats: LaneStats, personas: Sequence[Persona], config: LaneConfig,
                        propagation: Propagation | None = None, phase: Phase = "ended") -> str:
    """The lane verdict, checks, matrix and personas as one ``<section>``; PASS only once *phase* is ended."""
    lanes = list(config.lanes)
    context: dict[str, Any] = {
        "section_id": SECTION_ID,
        "marker": _MARKER, "end_marker": _END_MARKER,
        "phase": phase,
        "verdict": verdict_text(summary, stats, phase),
        "status": _status(summary, stats, phase),
        "checks": check_items(summary),
        "reasons": summary.reasons,
        "stats": stats,
        "error_rate": summary.error_rate,
        "config_source": config.source,
        "legend": [(lane, _color(lane, lanes)) for lane in lanes],
        "bar_width": _BAR_WIDTH,
        "matrix": [{**r, "served_text": fmt_counts(r["served"]), "fallbacks_text": fmt_counts(r["fallbacks"]),
                    "bar": _bar(r["served"], lanes)} for r in matrix_rows(stats)],
        "personas": [{**r, "lanes_text": fmt_counts(r["lanes"])} for r in persona_rows(stats, personas, config)],
        "findings": sorted(stats.findings.items(), key=lambda kv: (-kv[1], kv[0])),
        "propagation": propagation.lines() if propagation is not None else None,
    }
    return _templates().get_template("lanes_section.html").render(context)


def render_page(section: str, refresh_seconds: int | None = None) -> str:
    """A whole HTML page around *section* (the web UI's ``/lanes``), refreshing itself if asked."""
    return _templates().get_template("lanes_page.html").render(
        section=Markup(section),  # our own rendered section: escaped when it was rendered
        refresh_seconds=refresh_seconds,
    )


def lanes_link(href: str = "lanes") -> str:
    """A small fixed link to the Lanes page, added to locust's own index page (its React tabs hold only tables)."""
    return _templates().get_template("lanes_link.html").render(href=href)


def inject_html(path: str | Path, section: str) -> None:
    """Put *section* at the top of locust's HTML report (before its React root), replacing an earlier one.

    The report is one page of charts ~2,700 px tall; the verdict belongs above them, not after.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if _MARKER in text:
        start = text.index(_MARKER)
        end = text.find(_END_MARKER, start)
        end = end + len(_END_MARKER) if end >= 0 else text.index("</section>", start) + len("</section>")
        text = text[:start] + text[end:]
    root = text.find('<div id="root">')
    if root >= 0:
        text = text[:root] + section + text[root:]
    else:
        idx = text.rfind("</body>")
        text = text[:idx] + section + text[idx:] if idx >= 0 else text + section
    path.write_text(text, encoding="utf-8")
