"""The lane matrix for humans and machines: text for the terminal, JSON for CI, HTML with a picture.

The matrix has one row per service × requested lane: how many hops, which lanes served them, how
many fell back and why, and how many were wrong. Under it, one row per persona with the path its
requests most often took, so "xiaoming went a@gray → b@base → c@gray" is one glance away.

The HTML section (tables plus an SVG bar per row showing the served lanes) is added to locust's
own HTML report, and served live by the web UI's Lanes page. Pure: strings in, strings out.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from lane.config import LaneConfig
from lane.hops import parse_path

from .personas import Persona
from .propagation import Propagation
from .stats import LaneStats
from .summary import Summary

__all__ = [
    "build_json",
    "dumps",
    "expected_path",
    "inject_html",
    "matrix_rows",
    "persona_rows",
    "render_html_section",
    "render_page",
    "render_text",
]

_PALETTE: Final = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d")
_MARKER: Final = "<!-- lane-report -->"


def _fmt_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "-"


def matrix_rows(stats: LaneStats) -> list[dict[str, Any]]:
    rows = []
    for key in sorted(stats.cells):
        service, lane = key.split("|", 1)
        cell = stats.cells[key]
        rows.append({
            "service": service, "lane": lane, "requests": cell.requests, "served": dict(cell.served),
            "fallbacks": dict(cell.fallbacks), "justified": cell.justified, "failures": cell.failures,
        })
    return rows


def expected_path(config: LaneConfig, served: str, lane: str | None) -> str:
    """The path the services of *served* should take for *lane*, by the static config alone."""
    if lane is None:
        return "(random share)"
    hops = parse_path(served.replace(" → ", ", "))
    return " → ".join(
        f"{h.service}@{config.lane_for(h.service, lane) or '503'}" if h.service in config.services else h.label()
        for h in hops
    )


def persona_rows(stats: LaneStats, personas: Sequence[Persona], config: LaneConfig) -> list[dict[str, Any]]:
    rows = []
    for p in personas:
        counts = stats.personas.get(p.name)
        paths = dict(counts.paths) if counts else {}
        top = max(paths.items(), key=lambda kv: (kv[1], kv[0]))[0] if paths else ""
        rows.append({
            "name": p.name, "kind": p.kind, "rule": p.rule, "expected": dict(p.outcomes),
            "requests": counts.requests if counts else 0, "failures": counts.failures if counts else 0,
            "http_failures": counts.http_failures if counts else 0,
            "lanes": dict(counts.lanes) if counts else {}, "paths": paths, "path": top,
            "expected_path": expected_path(config, top, p.lane) if top else "",
        })
    return rows


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def render_text(summary: Summary, stats: LaneStats, personas: Sequence[Persona], config: LaneConfig,
                propagation: Propagation | None = None) -> str:
    out = ["", "Lane matrix (service x requested lane)"]
    out += _table(
        ["service", "lane", "requests", "served", "fallbacks", "failures"],
        [[r["service"], r["lane"], str(r["requests"]), _fmt_counts(r["served"]), _fmt_counts(r["fallbacks"]),
          str(r["failures"])] for r in matrix_rows(stats)],
    )
    out += ["", "Personas (most common path)"]
    out += _table(
        ["persona", "requests", "lanes", "failures", "path"],
        [[r["name"], str(r["requests"]), _fmt_counts(r["lanes"]), str(r["failures"] + r["http_failures"]),
          f"{r['path']} ({r['paths'].get(r['path'], 0)})" if r["path"] else "-"]
         for r in persona_rows(stats, personas, config)],
    )
    if propagation is not None:
        out += ["", "Propagation (what each app forwards of the lane; sidecar counts since each started)"]
        out += [f"  {line}" for line in propagation.lines()]
    checks = summary.checks
    out += ["", "Checks: " + " | ".join(
        f"{name} {'ok' if body.get('ok') else 'FAILED'}" for name, body in checks.items()
    ) + (f" | chaos {'ok' if summary.chaos.ok else 'FAILED'}" if summary.chaos else "")]
    for share in summary.shares:
        judged = "" if share.judged else " (too few samples to judge)"
        out.append(f"Share {share.persona} -> {share.lane}: {share.observed:.3f} of {share.samples}, expected "
                   f"{share.expected:.3f} ± {share.tolerance:.3f}{judged}: {'ok' if share.ok else 'FAILED'}")
    if stats.sticky:
        bad = sum(1 for lanes in stats.sticky.values() if len(lanes) > 1)
        out.append(f"Stickiness: {len(stats.sticky)} keys, {bad} colored more than one lane")
    if stats.findings:
        out.append("Wrong lanes:")
        out += [f"  {n:6d}  {msg}" for msg, n in sorted(stats.findings.items(), key=lambda kv: (-kv[1], kv[0]))]
    out.append(f"Requests {stats.requests}, HTTP failures {stats.http_failures} ({summary.error_rate:.2%}), "
               f"wrong lane {stats.lane_failures}" + (f", workers {stats.workers}" if stats.workers else ""))
    out.append("RESULT: PASS" if summary.ok else "RESULT: FAIL\n" + "\n".join(f"  - {r}" for r in summary.reasons))
    return "\n".join(out) + "\n"


def _color(lane: str, lanes: Sequence[str]) -> str:
    return _PALETTE[lanes.index(lane) % len(_PALETTE)] if lane in lanes else "#999999"


def _bar(served: Mapping[str, int], lanes: Sequence[str], width: int = 220) -> str:
    total = sum(served.values()) or 1
    x = 0.0
    parts = [f'<svg width="{width}" height="14" role="img" aria-label="served lanes">']
    for lane, n in sorted(served.items()):
        w = width * n / total
        parts.append(f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="14" fill="{_color(lane, lanes)}">'
                     f"<title>{html.escape(lane)}: {n}</title></rect>")
        x += w
    parts.append("</svg>")
    return "".join(parts)


def _propagation_html(propagation: Propagation | None) -> str:
    if propagation is None:
        return ""
    e = html.escape
    items = "".join(f"<li>{e(line)}</li>" for line in propagation.lines())
    return f'<h3>Propagation</h3><p>What each app forwards of the lane; sidecar counts since each started.</p><ul>{items}</ul>'


def render_html_section(summary: Summary, stats: LaneStats, personas: Sequence[Persona], config: LaneConfig,
                        propagation: Propagation | None = None) -> str:
    lanes = list(config.lanes)
    e = html.escape
    verdict = "PASS" if summary.ok else "FAIL"
    rows = []
    for r in matrix_rows(stats):
        rows.append(
            f"<tr><td>{e(r['service'])}</td><td>{e(r['lane'])}</td><td>{r['requests']}</td>"
            f"<td>{_bar(r['served'], lanes)} {e(_fmt_counts(r['served']))}</td>"
            f"<td>{e(_fmt_counts(r['fallbacks']))}</td><td>{r['failures']}</td></tr>"
        )
    prow = []
    for r in persona_rows(stats, personas, config):
        prow.append(
            f"<tr><td>{e(r['name'])}</td><td>{r['requests']}</td><td>{e(_fmt_counts(r['lanes']))}</td>"
            f"<td>{r['failures'] + r['http_failures']}</td><td>{e(r['path'])}</td><td>{e(r['expected_path'])}</td></tr>"
        )
    legend = " ".join(f'<span style="color:{_color(lane, lanes)}">&#9632; {e(lane)}</span>' for lane in lanes)
    reasons = "".join(f"<li>{e(r)}</li>" for r in summary.reasons)
    findings = "".join(f"<li>{n} × {e(m)}</li>" for m, n in sorted(stats.findings.items(), key=lambda kv: -kv[1]))
    return (
        f'{_MARKER}<section id="lane-report" style="font-family:sans-serif;margin:2em;color:#222;background:#fff">'
        f"<h2>Lane verification: {verdict}</h2>"
        f"<p>{stats.requests} requests, {stats.http_failures} HTTP failures, {stats.lane_failures} wrong lane. "
        f"Config {e(config.source)}.</p><ul>{reasons}</ul>"
        f"<h3>Lane matrix</h3><p>{legend}</p>"
        '<table border="1" cellpadding="4" style="border-collapse:collapse">'
        "<tr><th>service</th><th>requested lane</th><th>requests</th><th>served</th><th>fallbacks</th>"
        f"<th>failures</th></tr>{''.join(rows)}</table>"
        '<h3>Personas</h3><table border="1" cellpadding="4" style="border-collapse:collapse">'
        "<tr><th>persona</th><th>requests</th><th>lanes</th><th>failures</th><th>most common path</th>"
        f"<th>expected path</th></tr>{''.join(prow)}</table>"
        + (f"<h3>Wrong lanes</h3><ul>{findings}</ul>" if findings else "")
        + _propagation_html(propagation)
        + "</section>"
    )


def render_page(section: str, refresh_seconds: int | None = None) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh_seconds}">' if refresh_seconds else ""
    return f'<!doctype html><html><head><meta charset="utf-8"><title>Lanes</title>{meta}</head><body>{section}</body></html>'


def build_json(
    summary: Summary,
    stats: LaneStats,
    personas: Sequence[Persona],
    config: LaneConfig,
    locust_totals: Mapping[str, int] | None = None,
    propagation: Propagation | None = None,
) -> dict[str, Any]:
    return {
        **summary.to_json(),
        "config": config.source,
        "totals": {"requests": stats.requests, "http_failures": stats.http_failures,
                   "lane_failures": stats.lane_failures},
        "locust": dict(locust_totals) if locust_totals is not None else None,
        "workers": {w: {"requests": n} for w, n in sorted(stats.workers.items())},
        "matrix": matrix_rows(stats),
        "personas": persona_rows(stats, personas, config),
        "findings": dict(stats.findings),
        "propagation": propagation.to_json() if propagation is not None else None,
        "stats": stats.to_wire(),
    }


def inject_html(path: str | Path, section: str) -> None:
    """Add *section* to an HTML report just before ``</body>`` (replacing an earlier one)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if _MARKER in text:
        start = text.index(_MARKER)
        end = text.index("</section>", start) + len("</section>")
        text = text[:start] + text[end:]
    idx = text.rfind("</body>")
    text = text[:idx] + section + text[idx:] if idx >= 0 else text + section
    path.write_text(text, encoding="utf-8")


def dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=False)
