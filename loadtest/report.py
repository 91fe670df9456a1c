"""The lane matrix for humans and machines: text for the terminal, JSON for CI, the verdict's words.

The matrix has one row per service × requested lane: how many hops, which lanes served them, how
many fell back and why, and how many were wrong. Under it, one row per persona with the path its
requests most often took, so "xiaoming went a@gray → b@base → c@gray" is one glance away.

The rows, the checks and the verdict's wording are shared with the HTML views (`report_html`:
the Lanes page and the top of locust's HTML report) and the web UI's Lanes tab (`webui`), so every
view says the same thing. Pure: values in, strings out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from lane.core.config import LaneConfig
from lane.core.hops import parse_path

from .personas import Persona
from .propagation import Propagation
from .stats import LaneStats
from .summary import Summary

__all__ = [
    "Phase",
    "build_json",
    "check_items",
    "dumps",
    "expected_path",
    "fmt_counts",
    "matrix_rows",
    "persona_rows",
    "render_text",
    "render_verdict",
    "verdict_text",
]


Phase = Literal["ready", "running", "ended"]  # before the start, during the run, after it


def fmt_counts(counts: Mapping[str, int]) -> str:
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
            "protocol": "grpc" if p.grpc_method else "http",
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


def check_items(summary: Summary) -> list[tuple[str, bool]]:
    """Each check's name and whether it held, in report order (chaos last, when it ran)."""
    items = [(name, bool(body.get("ok"))) for name, body in summary.checks.items()]
    return items + ([("chaos", summary.chaos.ok)] if summary.chaos else [])


def verdict_text(summary: Summary, stats: LaneStats, phase: Phase) -> str:
    """PASS or FAIL once the run has *ended*; before that, what is known so far and never PASS."""
    if phase == "ended":
        return "PASS" if summary.ok else "FAIL"
    if phase == "ready":
        return "not started"
    if stats.lane_failures:
        return f"running — {stats.lane_failures} misroute{'s' if stats.lane_failures != 1 else ''} so far: FAIL"
    return "running — no misroute so far"


def render_text(summary: Summary, stats: LaneStats, personas: Sequence[Persona], config: LaneConfig,
                propagation: Propagation | None = None) -> str:
    out = ["", "Lane matrix (service x requested lane)"]
    out += _table(
        ["service", "lane", "requests", "served", "fallbacks", "failures"],
        [[r["service"], r["lane"], str(r["requests"]), fmt_counts(r["served"]), fmt_counts(r["fallbacks"]),
          str(r["failures"])] for r in matrix_rows(stats)],
    )
    out += ["", "Personas (most common path)"]
    out += _table(
        ["persona", "requests", "lanes", "failures", "path"],
        [[r["name"], str(r["requests"]), fmt_counts(r["lanes"]), str(r["failures"] + r["http_failures"]),
          f"{r['path']} ({r['paths'].get(r['path'], 0)})" if r["path"] else "-"]
         for r in persona_rows(stats, personas, config)],
    )
    if propagation is not None:
        out += ["", "Propagation (what each app forwards of the lane; sidecar counts since each started)"]
        out += [f"  {line}" for line in propagation.lines()]
    out.append("")
    for share in summary.shares:
        judged = "" if share.judged else " (too few samples to judge)"
        out.append(f"Share {share.persona} -> {share.lane}: {share.observed:.3f} of {share.samples}, expected "
                   f"{share.expected:.3f} ± {share.tolerance:.3f}{judged}: {'ok' if share.ok else 'FAILED'}")
    if stats.sticky:
        bad = sum(1 for lanes in stats.sticky.values() if len(lanes) > 1)
        out.append(f"Stickiness: {len(stats.sticky)} keys, {bad} colored more than one lane")
    if stats.findings:
        out.append("Lane failures:")
        out += [f"  {n:6d}  {msg}" for msg, n in sorted(stats.findings.items(), key=lambda kv: (-kv[1], kv[0]))]
    return "\n".join(out) + "\n" + render_verdict(summary, stats)


def render_verdict(summary: Summary, stats: LaneStats) -> str:
    """The closing lines: totals, checks, RESULT and why. Printed under the matrix, and again as the very
    last lines of a run (after locust's own tables), where a terminal or CI log is read first."""
    out = [f"Requests {stats.requests}, HTTP failures {stats.http_failures} ({summary.error_rate:.2%}), "
           f"lane failures {stats.lane_failures}" + (f", workers {stats.workers}" if stats.workers else "")]
    out.append("Checks: " + " | ".join(f"{name} {'ok' if ok else 'FAILED'}" for name, ok in check_items(summary)))
    out.append("RESULT: PASS" if summary.ok else "RESULT: FAIL")
    out += [f"  - {r}" for r in summary.reasons]
    return "\n".join(out) + "\n"


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


def dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=False)
