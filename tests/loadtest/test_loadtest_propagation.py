"""The summary's Propagation part: which app drops lane carriers, how its calls' lanes were found,
and lost lanes counted as breaks (reported, not failed on). Pure: fixed sidecar views in, text,
JSON and HTML out; `fetch_views` gets a stand-in fetch for the HTTP cases (the real endpoint is
exercised by the demo run in tests/loadtest/test_loadtest_demo.py)."""

from __future__ import annotations

import io
import json
import urllib.error
from email.message import Message
from typing import Any

import pytest

from lane.core.config_load import demo_config_text, parse_config
from lane.sidecar.carriers import CarrierStats, LaneSource
from loadtest.personas import build_personas
from loadtest.propagation import fetch_views, gather, propagation_of
from loadtest.report import build_json, render_text
from loadtest.report_html import render_html_section
from loadtest.stats import LaneStats
from loadtest.summary import summarize

CONFIG = parse_config(demo_config_text(), "demo")
CARRIERS = ("x-mse-tag", "baggage", "traceparent", "x-request-id")


def view(service: str, calls: list[tuple[tuple[str, ...], LaneSource]]) -> dict[str, Any]:
    """A sidecar's real `CarrierStats.view` after *calls* (what the app forwarded, how the lane was found)."""
    stats = CarrierStats(service, CARRIERS)
    for present, source in calls:
        stats.record(present, source)
    return stats.view()


VIEWS = [
    view("a", [(CARRIERS, LaneSource.HEADER)] * 3),
    # two instances of d: counts are summed into one line for the service
    view("d", [(("x-request-id",), LaneSource.RECOVERED)] * 70),
    view("d", [(("x-request-id",), LaneSource.RECOVERED)] * 50),
    view("e", [((), LaneSource.LOST)] * 37),
    # f's instances disagree: one forwards baggage, the other does not; one call was lost
    view("f", [(("baggage", "traceparent"), LaneSource.BAGGAGE)] * 4),
    view("f", [(("traceparent",), LaneSource.RECOVERED), ((), LaneSource.LOST)]),
    view("c", []),
]


def test_views_are_summed_per_service_and_named_in_plain_words() -> None:
    prop = propagation_of(VIEWS)
    by = {s.service: s for s in prop.services}
    assert list(by) == ["a", "d", "e", "f", "c"]
    assert by["d"].calls == 120 and by["d"].forwarded == ("x-request-id",) and by["d"].breaks == 0
    assert by["d"].line() == ("service d's app drops x-mse-tag, baggage and traceparent; it forwards only "
                              "x-request-id — 120 calls, lane recovered from x-request-id")
    assert by["e"].line() == ("service e's app drops x-mse-tag, baggage, traceparent and x-request-id; "
                              "it forwards none of them — 37 calls left in the default lane")
    assert by["f"].sometimes == ("baggage", "traceparent") and by["f"].forwarded == () and by["f"].breaks == 1
    assert by["f"].line() == ("service f's app drops x-mse-tag and x-request-id; sometimes baggage and traceparent"
                              " — 6 calls: lane carried by baggage (4), lane recovered from traceparent (1),"
                              " left in the default lane (1)")
    assert prop.breaks == 38
    lines = prop.lines()
    assert lines[:3] == [by["d"].line(), by["e"].line(), by["f"].line()]
    assert "a: app forwards every lane carrier" in lines
    assert "no outbound call seen from c" in lines
    assert lines[-1].startswith("Propagation breaks: 38 calls left in the default lane (service e 37, service f 1)")


def test_every_report_has_the_propagation_part_and_breaks_do_not_fail_the_run() -> None:
    stats, personas = LaneStats(), build_personas(CONFIG)
    summary = summarize(stats, personas, "base")
    prop = propagation_of(VIEWS)
    text = render_text(summary, stats, personas, CONFIG, prop)
    assert "Propagation (what each app forwards of the lane; sidecar counts since each started)" in text
    assert f"  {prop.services[1].line()}" in text.splitlines()
    assert not any("propagation" in r.lower() for r in summary.reasons)  # breaks are reported, not a FAIL reason
    assert "Propagation" not in render_text(summary, stats, personas, CONFIG)  # no admin, no part
    doc = json.loads(json.dumps(build_json(summary, stats, personas, CONFIG, None, prop)))
    assert doc["propagation"]["breaks"] == 38
    d = next(s for s in doc["propagation"]["services"] if s["service"] == "d")
    assert d["dropped"] == ["x-mse-tag", "baggage", "traceparent"] and d["lane_sources"]["recovered"] == 120
    assert build_json(summary, stats, personas, CONFIG)["propagation"] is None
    section = render_html_section(summary, stats, personas, CONFIG, prop)
    assert "<h3>Propagation</h3>" in section and "service d&#39;s app drops" in section  # escaped by Jinja2


def _http_error(code: int) -> urllib.error.HTTPError:
    return urllib.error.HTTPError("http://x/lane/carriers", code, "no", Message(), io.BytesIO(b""))


@pytest.mark.parametrize("answer, expected", [
    (VIEWS[1], [VIEWS[1]]),  # a sidecar's admin: one view
    ([VIEWS[0], VIEWS[1]], [VIEWS[0], VIEWS[1]]),  # the demo admin: a list
    (_http_error(404), []),  # the gateway's admin has no carriers view
    (_http_error(500), []),
    (ConnectionRefusedError(111, "refused"), []),
    ({"service": "x", "calls": "many", "carriers": {}, "lane_sources": {}}, []),
    ([VIEWS[0], {"status": "ok"}], []),
])
def test_fetch_views_takes_a_view_or_a_list_and_skips_what_is_not_one(
        answer: Any, expected: list[dict[str, Any]], caplog: pytest.LogCaptureFixture) -> None:
    def fetch(url: str) -> Any:
        assert url == "http://127.0.0.1:9/lane/carriers"
        if isinstance(answer, Exception):
            raise answer
        return answer

    with caplog.at_level("WARNING", logger="loadtest.propagation"):
        assert fetch_views("http://127.0.0.1:9/", fetch) == expected
    quiet = expected or (isinstance(answer, urllib.error.HTTPError) and answer.code == 404)
    assert len(caplog.records) == (0 if quiet else 1)


def test_gather_asks_each_admin_once_and_is_none_when_nobody_has_carriers() -> None:
    asked: list[str] = []

    def fetch(url: str) -> Any:
        asked.append(url)
        if "gateway" in url:
            raise _http_error(404)
        return VIEWS[1]

    prop = gather(["http://sidecar/", "http://sidecar", "http://gateway"], fetch)
    assert asked == ["http://sidecar/lane/carriers", "http://gateway/lane/carriers"]
    assert prop is not None and [s.service for s in prop.services] == ["d"]
    assert gather(["http://gateway"], fetch) is None
