"""The regex subset the gateway Lua mirrors, and the vectors derived from a config's rules."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import pytest

from lane.core.config_load import load_config, parse_config
from lane.core.errors import ConfigError
from mesh_config.lua import GATEWAY_MODULES, lua_file, to_lua
from mesh_config.regex import UnsupportedRegex, nfa_size, parse_regex
from mesh_config.vectors import load_vectors, python_lanes, sample_for, vectors_for
from tests.support.mesh_vectors import conformance_config

try:
    from lupa import luajit21 as lupa_runtime
except ImportError:  # pragma: no cover
    from lupa import lua51 as lupa_runtime

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("pattern", "why"), [
    (r"\bword", r"escape \\b"),
    (r"\Aabc", r"escape \\A"),
    (r"abc\Z", r"escape \\Z"),
    (r"(?i)abc", r"'\(\?' extension"),
    (r"(?=a)a", r"'\(\?' extension"),
    (r"x{,3}", "not a {m}, {m,} or {m,n} quantifier"),
    (r"x{", "not a {m}, {m,} or {m,n} quantifier"),
    (r"{", r"literal '\{'"),
    (r"\p{L}", r"escape \\p"),
    (r"\u00e9", r"escape \\u"),
    (r"[[:alpha:]]", "nested-set syntax"),
    (r"[--b]", "nested-set syntax"),
    (r"[a&&b]", "nested-set syntax"),
    (r"[\d-z]", "a range whose end is a class"),
    (r"a{1001}", "repetition bounds"),
    (r"(a{1000}){30}", "expands to 30000 NFA states"),
    (r"^*", "a quantifier on an anchor"),
    (r"a**", "a repeated quantifier"),
])
def test_patterns_outside_the_subset_are_rejected(pattern: str, why: str) -> None:
    with pytest.raises(UnsupportedRegex, match=why):
        parse_regex(pattern)


@pytest.mark.parametrize("pattern", [
    r"[]a]", r"[^]a]", r"a{2,}", r"(?P<name>x)+?", r"\x41\.\*", r"[\d\s_-]", r"[^a-z]", r"a|", r"()", r"}", r"]",
    r"é+", r".*", r"^$",
])
def test_supported_patterns_parse(pattern: str) -> None:
    re.compile(pattern, re.ASCII)  # what the config accepts first
    assert parse_regex(pattern)[0] in ("set", "cat", "alt", "rep", "bol", "eol")


def test_ascii_classes_follow_re2_not_unicode() -> None:
    assert parse_regex(r"\d") == ("set", (0x30, 0x39))
    assert parse_regex(r"[^\W]") == ("set", (0x30, 0x39, 0x41, 0x5A, 0x5F, 0x5F, 0x61, 0x7A))
    assert parse_regex(".") == ("set", (0, 9, 11, 0x10FFFF))


def test_nfa_size_is_what_the_lua_compiler_builds() -> None:
    rt = lupa_runtime.LuaRuntime(encoding=None)
    rt.execute(b"LANE_MODULES = {}")
    for name in GATEWAY_MODULES:
        rt.execute(f"LANE_MODULES.{name} = (function()\n{lua_file(name)}\nend)()".encode())
    regex = rt.eval(b"LANE_MODULES.regex")
    for pattern in (r"a{2,5}", r"(a|bc)*d?", r"[\w.]+@(x|y)\.(com|org)$", r"(ab){3,}", r"^x{0,4}$"):
        tree = parse_regex(pattern)
        program = regex.compile(rt.eval(to_lua(cast(Any, tree)).encode()))
        assert program[b"n"] - 1 == nfa_size(tree), pattern  # minus the accepting state


def test_unsupported_regex_names_the_rule_path_for_cookies_and_query() -> None:
    text = """
entry: a
lanes: {gray: {}}
coloring:
  - lane: gray
    match:
      cookies: [{name: u, exact: x}, {name: v, regex: '\\Bv'}]
services: {a: {instances: {base: ["127.0.0.1:1"]}}}
"""
    from mesh_config.render import render_objects

    with pytest.raises(ConfigError, match=r"^q\.yaml: coloring\[0\]\.match\.cookies\[1\]\.regex: the Istio gateway"):
        render_objects(parse_config(text, "q.yaml"))


def test_samples_meet_their_conditions() -> None:
    for rule in conformance_config().rules:
        for condition in rule.conditions:
            value = sample_for(condition)
            assert condition.match.test(value), (rule.name, condition, value)


def test_derived_vectors_cover_each_rule_from_both_sides() -> None:
    config = load_config(ROOT / "examples" / "demo.yaml")
    vectors = {v.name: v for v in vectors_for(config)}
    assert set(vectors) == {"no-lane-hints", "client-sets-gray", "rule0-xiaoming", "rule0-xiaoming-without0",
                            "rule1-xiaoming-grpc", "rule1-xiaoming-grpc-without0"}
    assert python_lanes(config.rules, vectors["rule0-xiaoming"].view(), "base") == {"gray"}
    assert python_lanes(config.rules, vectors["rule0-xiaoming-without0"].view(), "base") == {"base"}
    # the demo's gRPC rule (grpcio appends its own name to the user agent): a prefix, gray from both sides
    assert vectors["rule1-xiaoming-grpc"].headers == (("user-agent", "xiaoming grpc-x"),)
    assert python_lanes(config.rules, vectors["rule1-xiaoming-grpc"].view(), "base") == {"gray"}
    assert python_lanes(config.rules, vectors["rule1-xiaoming-grpc-without0"].view(), "base") == {"base"}
    assert python_lanes(config.rules, vectors["client-sets-gray"].view(), "base") == {"base"}

    conformance = conformance_config()
    derived = vectors_for(conformance)
    lanes = set().union(*(python_lanes(conformance.rules, v.view(), "base") for v in derived))
    assert lanes == {"base", "gray", "dev-alice", "canary", "frozen"}
    keyed = [v for v in derived if v.name.startswith("rule6-user-share-key")]
    assert {frozenset(python_lanes(conformance.rules, v.view(), "base")) for v in keyed} == {
        frozenset({"gray"}), frozenset({"base"})}  # sticky keys on both sides of the 50% share


def test_keyless_percentage_gives_both_possible_lanes() -> None:
    config = conformance_config()
    from mesh_config.vectors import Vector

    assert python_lanes(config.rules, Vector("coin", (), "rnd=1").view(), "base") == {"gray", "base"}


def test_vectors_file_is_loaded_and_bad_ones_are_clear_errors(tmp_path: Path) -> None:
    good = tmp_path / "v.yaml"
    good.write_text("- {name: a, headers: {user-agent: xiaoming}}\n- {name: b, headers: [[cookie, x=1], [cookie, y=2]], query: 'k=1'}\n")
    a, b = load_vectors(good)
    assert a.headers == (("user-agent", "xiaoming"),) and b.headers == (("cookie", "x=1"), ("cookie", "y=2"))
    assert b.target == "/?k=1"
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {name: a, headers: [[only-name]]}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml\[0\]: headers: expected \[name, value\]"):
        load_vectors(bad)


@pytest.mark.parametrize("percent", [1, 5, 30, 50, 95, 99])
def test_derived_vectors_prove_every_share_from_inside_and_outside(percent: int) -> None:
    from lane.core.config_load import parse_config

    config = parse_config(f"""
lanes: {{gray: {{}}}}
entry: a
coloring:
  - {{name: share, lane: gray, percentage: {{percent: {percent}, key: {{header: x-user}}, salt: s}}}}
services:
  a: {{instances: {{base: ["127.0.0.1:1"], gray: ["127.0.0.1:2"]}}}}
""", "share.yaml")
    keyed = [v for v in vectors_for(config) if v.name.startswith("rule0-share-key")]
    lanes = {v.name: python_lanes(config.rules, v.view(), "base") for v in keyed}
    assert len(keyed) == 8
    assert all(lane == ({"gray"} if name.endswith("-in") else {"base"}) for name, lane in lanes.items())
    assert sum(name.endswith("-in") for name in lanes) == 4  # both sides, however small the share


def test_sticky_keys_at_the_edges() -> None:
    from mesh_config.vectors import sticky_keys

    assert [inside for _, inside in sticky_keys(0, "", 3)] == [False, False, False]
    assert [inside for _, inside in sticky_keys(100, "", 3)] == [True, True, True]
