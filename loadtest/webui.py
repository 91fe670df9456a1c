"""The web UI's "Lanes" tab and page: the lane matrix, live.

Locust's React UI shows extra tabs declared in ``template_args["extended_tabs"]`` and fills their
tables from an ``extended_stats`` entry in the ``/stats/requests`` answer (locust's
``examples/extend_web_ui.py`` shape). We add that tab, plus ``/lanes`` (a self-refreshing HTML
page with the full matrix, personas and SVG bars) and ``/lanes.json`` (the summary document).

Loaded only inside a locust process (it touches locust's Flask app); it does not import locust.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from flask import Response, request

from .report import _fmt_counts, matrix_rows, render_html_section, render_page
from .session import LaneSession

__all__ = ["TAB_KEY", "install_web_ui"]

TAB_KEY: Final = "lanes"
_STRUCTURE: Final = [
    {"key": "service", "title": "Service"},
    {"key": "lane", "title": "Requested lane"},
    {"key": "requests", "title": "Requests"},
    {"key": "served", "title": "Served by"},
    {"key": "fallbacks", "title": "Fallbacks"},
    {"key": "failures", "title": "Wrong lane"},
]


def _tab_rows(session: LaneSession) -> list[dict[str, Any]]:
    return [
        {"service": r["service"], "lane": r["lane"], "requests": r["requests"], "served": _fmt_counts(r["served"]),
         "fallbacks": _fmt_counts(r["fallbacks"]), "failures": r["failures"]}
        for r in matrix_rows(session.stats)
    ]


def install_web_ui(web_ui: Any, session: LaneSession, document: Callable[[], dict[str, Any]]) -> None:
    """Add the Lanes tab and pages to locust's *web_ui*; *document* builds the live JSON summary."""
    app = web_ui.app
    web_ui.template_args["extended_tabs"] = [{"title": "Lanes", "key": TAB_KEY}]
    web_ui.template_args["extended_tables"] = [{"key": TAB_KEY, "structure": _STRUCTURE}]

    def lanes_page() -> Response:
        section = render_html_section(session.summary(), session.stats, session.personas, session.config)
        return Response(render_page(section, refresh_seconds=2), mimetype="text/html")

    def lanes_json() -> Response:
        return Response(json.dumps(document()), mimetype="application/json")

    def add_lane_table(response: Response) -> Response:
        if not request.path.endswith("/stats/requests") or response.mimetype != "application/json":
            return response
        body = response.get_json(silent=True)
        if isinstance(body, dict):
            body["extended_stats"] = [{"key": TAB_KEY, "data": _tab_rows(session)}]
            response.set_data(json.dumps(body))
        return response

    app.add_url_rule("/lanes", "lane_matrix_page", lanes_page)
    app.add_url_rule("/lanes.json", "lane_matrix_json", lanes_json)
    app.after_request(add_lane_table)
