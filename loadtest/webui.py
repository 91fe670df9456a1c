"""The web UI's "Lanes" tab and page: the verdict, the checks, the lane matrix and the personas, live.

Locust's React UI shows extra tabs declared in ``template_args["extended_tabs"]`` and fills their
tables from an ``extended_stats`` entry in the ``/stats/requests`` answer (locust's
``examples/extend_web_ui.py`` shape). A tab is one plain-text table, so the Lanes tab is one table
read top to bottom: the verdict row, one row per check, one per service × requested lane, one per
persona. ``/lanes`` is the same as a self-refreshing page with SVG bars and expected paths, linked
from a button added to locust's index page; ``/lanes.json`` is the summary document. While the run
goes on the verdict says what is known so far ("running — no misroute so far"), never PASS.

Loaded only inside a locust process (it touches locust's Flask app); it does not import locust.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from flask import Response, request

from .report import Phase, check_items, fmt_counts, matrix_rows, persona_rows, verdict_text
from .report_html import lanes_link, render_html_section, render_page
from .session import LaneSession

__all__ = ["TAB_KEY", "install_web_ui", "tab_rows"]

TAB_KEY: Final = "lanes"
_STRUCTURE: Final = [
    {"key": "part", "title": "Part"},
    {"key": "name", "title": "Name"},
    {"key": "requests", "title": "Requests"},
    {"key": "result", "title": "Result"},
    {"key": "detail", "title": "Detail"},
    {"key": "failures", "title": "Failures"},
]


def _check_detail(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    parts = []
    for key, value in body.items():
        if key == "ok":
            continue
        shown = fmt_counts(value) if isinstance(value, dict) and all(isinstance(v, int) for v in value.values()) \
            else len(value) if isinstance(value, dict) else value
        parts.append(f"{key.replace('_', ' ')} {shown}")
    return ", ".join(parts)


def tab_rows(session: LaneSession, phase: Phase) -> list[dict[str, Any]]:
    """The Lanes tab, top to bottom: verdict, checks, matrix, personas (plain text: the tab escapes it)."""
    summary, stats = session.summary(), session.stats
    reasons = "; ".join(summary.reasons) if phase == "ended" or stats.lane_failures else ""
    rows: list[dict[str, Any]] = [{
        "part": "Verdict", "name": "lane verification", "requests": stats.requests,
        "result": verdict_text(summary, stats, phase),
        "detail": reasons or "the Lanes page (button below right, /lanes) has bars and expected paths",
        "failures": stats.lane_failures,
    }]
    rows += [{"part": "Check", "name": name, "requests": "", "result": "ok" if ok else "FAILED",
              "detail": _check_detail(summary.checks.get(name, {})), "failures": ""}
             for name, ok in check_items(summary)]
    rows += [{"part": "Lane", "name": f"{r['service']} @ {r['lane']}", "requests": r["requests"],
              "result": "served " + fmt_counts(r["served"]), "detail": "fallbacks " + fmt_counts(r["fallbacks"]),
              "failures": r["failures"]} for r in matrix_rows(stats)]
    rows += [{"part": "Persona", "name": r["name"], "requests": r["requests"], "result": "lanes " + fmt_counts(r["lanes"]),
              "detail": r["path"] or "-", "failures": r["failures"] + r["http_failures"]}
             for r in persona_rows(stats, session.personas, session.config)]
    return rows


def install_web_ui(web_ui: Any, session: LaneSession, document: Callable[[], dict[str, Any]],
                   phase: Callable[[], Phase]) -> None:
    """Add the Lanes tab and pages to locust's *web_ui*; *document* builds the live JSON summary, *phase*
    says whether the run has started, goes on, or has ended (from the runner's state)."""
    app = web_ui.app
    web_ui.template_args["extended_tabs"] = [{"title": "Lanes", "key": TAB_KEY}]
    web_ui.template_args["extended_tables"] = [{"key": TAB_KEY, "structure": _STRUCTURE}]

    def lanes_page() -> Response:
        section = render_html_section(session.summary(), session.stats, session.personas, session.config,
                                      phase=phase())
        return Response(render_page(section, refresh_seconds=2), mimetype="text/html")

    def lanes_json() -> Response:
        return Response(json.dumps(document()), mimetype="application/json")

    def add_lane_table(response: Response) -> Response:
        if request.endpoint == "locust.index" and response.mimetype == "text/html" and not response.direct_passthrough:
            page = response.get_data(as_text=True)
            end = page.rfind("</body>")
            if end >= 0:
                response.set_data(page[:end] + lanes_link(request.script_root + "/lanes") + page[end:])
            return response
        if not request.path.endswith("/stats/requests") or response.mimetype != "application/json":
            return response
        body = response.get_json(silent=True)
        if isinstance(body, dict):
            body["extended_stats"] = [{"key": TAB_KEY, "data": tab_rows(session, phase())}]
            response.set_data(json.dumps(body))
        return response

    app.add_url_rule("/lanes", "lane_matrix_page", lanes_page)
    app.add_url_rule("/lanes.json", "lane_matrix_json", lanes_json)
    app.after_request(add_lane_table)
