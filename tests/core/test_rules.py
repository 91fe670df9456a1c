"""Coloring rules: every matcher, first-match order, and the sticky percentage."""

from __future__ import annotations

import math
import random
import time
from textwrap import dedent

import pytest
from multidict import CIMultiDict

from lane.core.config_load import parse_config
from lane.core.errors import ConfigError
from lane.core.hashing import bucket_of
from lane.core.rules import RequestView, color

SERVICES = """
entry: a
services:
  a: {instances: {base: ["127.0.0.1:1"], gray: ["127.0.0.1:2"], blue: ["127.0.0.1:3"]}}
lanes:
  gray: {}
  blue: {}
"""


def rules_of(coloring: str):  # type: ignore[no-untyped-def]
    return parse_config(dedent(SERVICES) + "coloring:\n" + dedent(coloring))


def lane_of(config, headers=(), query: str = "") -> str:  # type: ignore[no-untyped-def]
    """The lane, asserting the gateway's view (over the received multidict, read lazily) agrees."""
    lane = color(config.rules, RequestView.from_parts(headers, query), config.default_lane).lane
    received = CIMultiDict(headers)
    gateway_view = RequestView.of_request(received, query)
    assert color(config.rules, gateway_view, config.default_lane).lane == lane
    assert gateway_view == RequestView.from_parts(headers, query)
    return lane


@pytest.mark.parametrize(
    ("match", "yes", "no"),
    [
        ("exact: xiaoming", ["xiaoming"], ["Xiaoming", "xiaoming2", " xiaoming", ""]),
        ("prefix: Mozilla/5", ["Mozilla/5.0 (X11)", "Mozilla/5"], ["Mozilla/4.0", "mozilla/5.0"]),
        ("regex: 'xiao(ming|hong)'", ["xiaoming", "xiaohong"], ["xiaomingx", "axiaoming", "xiao"]),
        ("present: true", ["", "anything"], []),
    ],
)
def test_header_matchers(match: str, yes: list[str], no: list[str]) -> None:
    config = rules_of(f"  - lane: gray\n    match: {{headers: [{{name: User-Agent, {match}}}]}}\n")
    for value in yes:
        assert lane_of(config, [("user-agent", value)]) == "gray", value
    for value in no:
        assert lane_of(config, [("User-Agent", value)]) == "base", value
    if match != "present: true":
        assert lane_of(config, []) == "base"


def test_header_names_are_case_insensitive_and_repeats_join_with_commas() -> None:
    config = rules_of("  - lane: gray\n    match: {headers: [{name: X-Group, exact: 'a,b'}]}\n")
    assert lane_of(config, [("x-group", "a"), ("X-GROUP", "b")]) == "gray"
    assert lane_of(config, [("x-group", "a")]) == "base"


def test_absent_header() -> None:
    config = rules_of("  - lane: gray\n    match: {headers: [{name: x-internal, absent: true}]}\n")
    assert lane_of(config, []) == "gray"
    assert lane_of(config, [("X-Internal", "1")]) == "base"


def test_cookie_matchers_and_similar_names() -> None:
    config = rules_of(dedent("""\
      - lane: gray
        match: {cookies: [{name: canary, exact: "yes"}]}
      - lane: blue
        match: {cookies: [{name: team, regex: 'blue-[0-9]+'}]}
    """))
    assert lane_of(config, [("Cookie", "a=1; canary=yes; b=2")]) == "gray"
    assert lane_of(config, [("Cookie", "canary2=yes")]) == "base"
    assert lane_of(config, [("Cookie", "canar=yes")]) == "base"
    assert lane_of(config, [("Cookie", "canary=yes2")]) == "base"
    assert lane_of(config, [("Cookie", "x=1"), ("Cookie", "team=blue-42")]) == "blue"
    assert lane_of(config, [("Cookie", "team=blue-")]) == "base"
    # the first cookie of a name wins
    assert lane_of(config, [("Cookie", "canary=no; canary=yes")]) == "base"


def test_query_matchers_are_form_decoded() -> None:
    config = rules_of(dedent("""\
      - lane: gray
        match: {query: [{name: who, exact: "xiao ming"}]}
      - lane: blue
        match: {query: [{name: lane, regex: 'b.*'}]}
    """))
    assert lane_of(config, query="who=xiao+ming") == "gray"
    assert lane_of(config, query="who=xiao%20ming&x=1") == "gray"
    assert lane_of(config, query="who=xiaoming") == "base"
    assert lane_of(config, query="lane=blue") == "blue"
    assert lane_of(config, query="lane=ablue") == "base"
    assert lane_of(config, query="who=other&who=xiao+ming") == "base"  # first one wins


def test_conditions_in_one_rule_are_anded() -> None:
    config = rules_of(dedent("""\
      - lane: gray
        match:
          headers: [{name: user-agent, exact: xiaoming}]
          cookies: [{name: beta, present: true}]
    """))
    assert lane_of(config, [("user-agent", "xiaoming"), ("cookie", "beta=1")]) == "gray"
    assert lane_of(config, [("user-agent", "xiaoming")]) == "base"
    assert lane_of(config, [("cookie", "beta=1")]) == "base"


def test_first_matching_rule_wins() -> None:
    config = rules_of(dedent("""\
      - name: vip
        lane: blue
        match: {headers: [{name: x-vip, present: true}]}
      - name: xiaoming
        lane: gray
        match: {headers: [{name: user-agent, exact: xiaoming}]}
    """))
    request = RequestView.from_parts([("user-agent", "xiaoming"), ("x-vip", "1")])
    assert color(config.rules, request, "base").rule == "vip"
    assert lane_of(config, [("user-agent", "xiaoming")]) == "gray"
    assert color(config.rules, RequestView(), "base").rule is None


def test_sticky_percentage_is_deterministic_per_key() -> None:
    config = rules_of("  - lane: gray\n    percentage: {percent: 10, key: {header: x-user-id}}\n")
    for i in range(200):
        user = f"user-{i}"
        first = lane_of(config, [("x-user-id", user)])
        assert all(lane_of(config, [("x-user-id", user)]) == first for _ in range(3))
        assert first == ("gray" if bucket_of(user) < 10 else "base")


def test_keyed_percentage_without_the_key_does_not_match() -> None:
    config = rules_of("  - lane: gray\n    percentage: {percent: 100, key: {cookie: uid}}\n")
    assert lane_of(config, []) == "base"
    assert lane_of(config, [("cookie", "uid=1")]) == "gray"


@pytest.mark.parametrize("percent", [1, 10, 50, 90])
def test_sticky_share_is_within_binomial_tolerance_over_10000_keys(percent: int) -> None:
    config = rules_of(f"  - lane: gray\n    percentage: {{percent: {percent}, key: {{query: uid}}}}\n")
    n = 10_000
    gray = sum(lane_of(config, query=f"uid={i}") == "gray" for i in range(n))
    p = percent / 100
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(gray - n * p) < 5 * sigma, (gray, n * p, sigma)


def test_salt_decorrelates_rules() -> None:
    keys = [f"k{i}" for i in range(2000)]
    plain = {k for k in keys if bucket_of(k) < 50}
    salted = {k for k in keys if bucket_of(k, "exp-2") < 50}
    assert plain != salted and 0.3 < len(plain & salted) / len(plain) < 0.7


def test_keyless_percentage_is_a_per_request_draw() -> None:
    config = rules_of("  - lane: gray\n    percentage: {percent: 10}\n")
    rng = random.Random(7)
    n = 5000
    gray = sum(color(config.rules, RequestView(), "base", rng).lane == "gray" for _ in range(n))
    assert abs(gray - 500) < 5 * math.sqrt(n * 0.1 * 0.9)


REDOS_PATTERNS = ("(a|a)*b", "(a*)*b", "(x+x+)+y", "(a|aa)*c")


@pytest.mark.parametrize("pattern", REDOS_PATTERNS)
def test_catastrophic_regexes_cost_linear_time_not_a_frozen_gateway(pattern: str) -> None:
    # Python's backtracking re needs ~5 s for (a|a)*b on 24 characters and doubles per character;
    # RE2 answers every length here in microseconds. The bound is generous for a loaded machine.
    config = rules_of(f"""
        - {{name: r, lane: gray, match: {{headers: [{{name: User-Agent, regex: '{pattern}'}}]}}}}
        """)
    letter = "x" if "x" in pattern else "a"
    started = time.perf_counter()
    for n in (24, 30, 200, 5000):
        assert lane_of(config, [("User-Agent", letter * n)]) == "base"
        assert lane_of(config, [("User-Agent", letter * n + pattern[-1])]) == "gray"
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize(("pattern", "value", "lane"), [
    ("a$", "a\n", "base"),  # RE2: $ is the end of the value, not before a final newline (Python re)
    (r"\s", "\v", "base"),  # RE2's \s is [\t\n\f\r ]
    (r"\s", "\t", "gray"),
    (".*", "ok\udcff", "base"),  # an invalid UTF-8 byte (surrogateescape) never matches, as in Envoy
    ("é+", "éé", "gray"),
])
def test_regex_semantics_are_re2_fullmatch_on_the_wire_bytes(pattern: str, value: str, lane: str) -> None:
    config = rules_of(f"""
        - {{name: r, lane: gray, match: {{query: [{{name: q, regex: '{pattern}'}}]}}}}
        """)
    view = RequestView(query={"q": value})
    assert color(config.rules, view, config.default_lane).lane == lane


@pytest.mark.parametrize(("pattern", "why"), [
    ("x{,3}", r"a \{,n\} repeat"),  # Python reads {0,3}, RE2 literal text: rejected, not silently different
    (r"\pN+", "invalid regex"),  # RE2 takes it, Python's re does not
    ("a{1001}", "invalid regex .* for RE2: invalid repetition size"),  # Python takes it, RE2 does not
])
def test_regexes_the_engines_disagree_on_are_config_errors(pattern: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        rules_of(f"""
            - {{name: r, lane: gray, match: {{headers: [{{name: x, regex: '{pattern}'}}]}}}}
            """)
