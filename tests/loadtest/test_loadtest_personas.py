"""Traffic personas: derived from the rules, expected lanes from the reference engine, near misses miss."""

from __future__ import annotations

import random
import re

import pytest

from lane.core.config_load import demo_config_text, parse_config
from lane.core.hashing import in_percentage
from lane.core.rules import color
from loadtest.personas import USER_AGENT, build_personas, outcomes
from loadtest.regex_examples import example_of, is_safe_value, near_miss_of

RICH = """
lanes:
  gray: {fallback: base}
  blue: {fallback: gray}
  canary: {}
entry: a
coloring:
  - name: xiaoming
    lane: gray
    match:
      headers: [{name: User-Agent, exact: xiaoming}]
  - name: beta-users
    lane: blue
    match:
      headers: [{name: x-user, prefix: beta}]
      cookies: [{name: uid, regex: "u[0-9]{3}"}]
  - name: sticky
    lane: gray
    match:
      query: [{name: region, exact: eu}]
    percentage: {percent: 30, key: {cookie: sid}, salt: s1}
  - name: canary
    lane: canary
    match:
      headers: [{name: x-canary, present: true}, {name: x-nocanary, absent: true}]
    percentage: {percent: 50}
services:
  a:
    instances: {base: ["127.0.0.1:1"], gray: ["127.0.0.1:2"], blue: ["127.0.0.1:3"]}
  b:
    instances: {base: ["127.0.0.1:4"]}
"""


@pytest.fixture(scope="module")
def rich():  # type: ignore[no-untyped-def]
    return parse_config(RICH, "rich.yaml")


def by_name(personas, name):  # type: ignore[no-untyped-def]
    return next(p for p in personas if p.name == name)


def test_demo_personas_match_near_miss_nothing_and_forged() -> None:
    config = parse_config(demo_config_text(), "demo")
    personas = build_personas(config)
    assert [(p.name, p.lane) for p in personas] == [
        ("xiaoming", "gray"),
        ("xiaoming ~case header user-agent", "base"),
        ("xiaoming ~name header user-agent", "base"),
        ("no-match", "base"),
        ("forged x-mse-tag=gray", "base"),
        ("forged baggage x-mse-tag=gray", "base"),
    ]
    assert dict(by_name(personas, "xiaoming").headers)["user-agent"] == "xiaoming"
    assert dict(by_name(personas, "xiaoming ~case header user-agent").headers)["user-agent"] == "XIAOMING"
    assert dict(by_name(personas, "no-match").headers)["user-agent"] == USER_AGENT
    typo = dict(by_name(personas, "xiaoming ~name header user-agent").headers)
    assert typo["user-agen"] == "xiaoming" and typo["user-agent"] == USER_AGENT
    assert dict(by_name(personas, "forged x-mse-tag=gray").headers)["x-mse-tag"] == "gray"
    assert dict(by_name(personas, "forged baggage x-mse-tag=gray").headers)["baggage"] == "x-mse-tag=gray"


def test_every_deterministic_persona_lane_is_what_the_reference_engine_says(rich) -> None:  # type: ignore[no-untyped-def]
    for persona in build_personas(rich):
        if persona.lane is not None:
            assert color(rich.rules, persona.view(), rich.default_lane, random.Random(0)).lane == persona.lane


def test_each_rule_gets_a_matching_persona_and_near_misses_do_not_match_it(rich) -> None:  # type: ignore[no-untyped-def]
    personas = build_personas(rich)
    rules = {r.name: r for r in rich.rules}
    assert by_name(personas, "xiaoming").lane == "gray"
    assert by_name(personas, "beta-users").lane == "blue"
    misses = [p for p in personas if p.kind == "near-miss"]
    assert {p.name for p in misses} >= {
        "xiaoming ~case header user-agent",
        "beta-users ~prefix header x-user",
        "beta-users ~name header x-user",
        "beta-users ~regex cookie uid",
        "beta-users ~name cookie uid",
        "sticky ~no key",
        "sticky ~case query region",
        "canary ~name header x-canary",
        "canary ~present header x-nocanary",
    }
    for p in misses:
        rule = rules[p.rule]
        assert not all(c.holds(p.view()) for c in rule.conditions) or not rule.matches(p.view(), random.Random(1))
    assert dict(by_name(personas, "beta-users ~prefix header x-user").headers)["x-user"] == "bet"
    assert dict(by_name(personas, "beta-users ~name cookie uid").headers)["cookie"] == "UID=u000"
    typo = dict(by_name(personas, "beta-users ~name header x-user").headers)
    assert typo["x-use"] == "beta1" and "x-user" not in typo


def test_a_header_name_one_typo_off_is_a_near_miss_for_every_match_kind() -> None:
    """README: near misses include "a cookie or header name one typo off" -- exact, prefix, regex, present."""
    text = demo_config_text().replace(
        "        - name: User-Agent\n          exact: xiaoming\n",
        "        - {name: x-exact, exact: yes-please}\n        - {name: x-prefix, prefix: be}\n"
        "        - {name: x-regex, regex: 'r[0-9]'}\n        - {name: x-present, present: true}\n")
    config = parse_config(text, "typos.yaml")
    assert [c.name for c in config.rules[0].conditions] == ["x-exact", "x-prefix", "x-regex", "x-present"]
    personas = build_personas(config)
    for header in ("x-exact", "x-prefix", "x-regex", "x-present"):
        typo = by_name(personas, f"xiaoming ~name header {header}")
        assert typo.kind == "near-miss" and typo.lane == "base"
        sent = dict(typo.headers)
        assert header not in sent and header[:-1] in sent


def test_sticky_keys_sit_on_both_sides_of_the_share_by_the_hash(rich) -> None:  # type: ignore[no-untyped-def]
    sticky = [p for p in build_personas(rich) if p.kind == "sticky"]
    assert len(sticky) == 4 and len({p.sticky_key for p in sticky}) == 4
    for p in sticky:
        assert p.sticky_key is not None
        inside = in_percentage(p.sticky_key, 30, "s1")
        assert p.lane == ("gray" if inside else "base")
        assert ("in share" in p.name) == inside
        assert f"sid={p.sticky_key}" in dict(p.headers)["cookie"] and p.query == "region=eu"


def test_keyless_percentage_persona_carries_the_distribution(rich) -> None:  # type: ignore[no-untyped-def]
    canary = by_name(build_personas(rich), "canary")
    assert canary.kind == "share" and canary.lane is None
    assert dict(canary.outcomes) == pytest.approx({"canary": 0.5, "base": 0.5})
    assert set(canary.possible_lanes) == {"canary", "base"}


def test_outcomes_chain_random_rules_and_stop_at_a_deterministic_one() -> None:
    config = parse_config("""
lanes: {gray: {}, blue: {}}
entry: a
coloring:
  - {lane: gray, percentage: {percent: 20}}
  - {lane: blue, percentage: {percent: 50}}
  - {lane: gray, match: {headers: [{name: x, present: true}]}}
services: {a: {instances: {base: ["127.0.0.1:1"]}}}
""")
    from lane.core.rules import RequestView

    with_x = dict(outcomes(config.rules, RequestView(headers={"x": "1"}), "base"))
    assert with_x == pytest.approx({"gray": 0.2 + 0.4, "blue": 0.4})
    without = dict(outcomes(config.rules, RequestView(), "base"))
    assert without == pytest.approx({"gray": 0.2, "blue": 0.4, "base": 0.4})


def test_forged_personas_can_be_turned_off(rich) -> None:  # type: ignore[no-untyped-def]
    assert not [p for p in build_personas(rich, forged=False) if p.kind == "forged"]
    forged = [p for p in build_personas(rich) if p.kind == "forged"]
    assert len(forged) == 6 and all(p.lane == "base" for p in forged)


def test_persona_names_are_unique_even_for_clashing_rule_names() -> None:
    config = parse_config("""
lanes: {gray: {}}
entry: a
coloring:
  - {name: same, lane: gray, match: {headers: [{name: x, exact: "1"}]}}
  - {name: same, lane: gray, match: {headers: [{name: y, exact: "2"}]}}
services: {a: {instances: {base: ["127.0.0.1:1"]}}}
""")
    names = [p.name for p in build_personas(config)]
    assert len(names) == len(set(names)) and "same #2" in names


@pytest.mark.parametrize("pattern", [r"xiao.*", r"(alice|bob)-[0-9]{3}", r"[^a-z]+x", r"\d+", r"user-\w{2,4}",
                                     r"^beta$", r"(?i)Gray", r"[a-c]*", r"v1\.2\.\d", r"(?:foo){2}bar"])
def test_regex_examples_fully_match_and_near_misses_do_not(pattern: str) -> None:
    compiled = re.compile(pattern, re.ASCII)
    example = example_of(compiled)
    assert example is not None and compiled.fullmatch(example) and is_safe_value(example)
    miss = near_miss_of(compiled, example)
    assert miss is not None and not compiled.fullmatch(miss) and is_safe_value(miss)


def test_regex_we_cannot_synthesise_gives_no_example_instead_of_a_wrong_one() -> None:
    assert example_of(re.compile(r"a(?=b)")) is None
    assert example_of(re.compile(r"\s+")) is None  # whitespace would not survive a header
