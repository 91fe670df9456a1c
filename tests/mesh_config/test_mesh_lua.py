"""The generated Lua against the Python engine, in an embedded LuaJIT (the dialect Envoy runs).

The whole generated gateway script runs with a stand-in for Envoy's request handle (Envoy's
header-map API: get joins repeats with ",", getAtIndex is 0-based, getNumValues, add, remove,
replace; :path and :authority pseudo headers). That stand-in is the one fake here: the same
script runs in a real Envoy in test_mesh_envoy.py. Module-level checks (hash, UTF-8, strip,
regex, baggage) compare the real .lua files with the Python functions they mirror.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lane.core import baggage as py_baggage
from lane.core.config_load import parse_config
from lane.core.hashing import fnv1a_32
from lane.core.rules import RequestView, ValueMatch
from mesh_config.lua import GATEWAY_MODULES, gateway_lua, lua_file, sidecar_lua, to_lua
from mesh_config.regex import parse_regex
from mesh_config.vectors import Vector, python_lanes
from tests.support.mesh_vectors import RANDOM_RULE_QUERY, conformance_config, conformance_vectors

try:
    from lupa import luajit21 as lupa_runtime  # the dialect Envoy embeds
except ImportError:  # pragma: no cover - lupa wheels ship LuaJIT on x86-64 Linux
    from lupa import lua51 as lupa_runtime

HOST = "lane.test"

FAKE_ENVOY = r"""
local function lower(s) return string.lower(s) end
function make_handle(pairs)
  local list = {}
  for i = 1, #pairs do list[i] = {lower(pairs[i][1]), pairs[i][2]} end
  local headers = {}
  function headers:get(key)
    local values = {}
    for _, p in ipairs(list) do if p[1] == lower(key) then values[#values + 1] = p[2] end end
    if #values == 0 then return nil end
    return table.concat(values, ",")
  end
  function headers:getNumValues(key)
    local n = 0
    for _, p in ipairs(list) do if p[1] == lower(key) then n = n + 1 end end
    return n
  end
  function headers:getAtIndex(key, index)
    local n = 0
    for _, p in ipairs(list) do
      if p[1] == lower(key) then
        if n == index then return p[2] end
        n = n + 1
      end
    end
    return nil
  end
  function headers:remove(key)
    local kept = {}
    for _, p in ipairs(list) do if p[1] ~= lower(key) then kept[#kept + 1] = p end end
    list = kept
  end
  function headers:add(key, value) list[#list + 1] = {lower(key), value} end
  function headers:replace(key, value) headers:remove(key); headers:add(key, value) end
  local handle = {cleared = false}
  function handle:headers() return headers end
  function handle:clearRouteCache() self.cleared = true end
  return handle
end
"""


def _runtime(script: str) -> Any:
    rt = lupa_runtime.LuaRuntime(unpack_returned_tuples=True, encoding=None)
    rt.execute(FAKE_ENVOY.encode())
    rt.execute(script.encode("utf-8"))
    return rt


def _modules() -> Any:
    """A Lua state with the library modules loaded as the global LANE_MODULES, for direct calls."""
    rt = lupa_runtime.LuaRuntime(unpack_returned_tuples=True, encoding=None)
    rt.execute(b"LANE_MODULES = {}")
    for name in GATEWAY_MODULES:
        rt.execute(f"LANE_MODULES.{name} = (function()\n{lua_file(name)}\nend)()".encode())
    return rt


@pytest.fixture(scope="module")
def lua() -> Any:
    return _modules()


@pytest.fixture(scope="module")
def mods(lua: Any) -> Any:
    return lua.eval(b"LANE_MODULES")


@pytest.fixture(scope="module")
def gateway() -> Any:
    return _runtime(gateway_lua(conformance_config()))


def _b(s: str) -> bytes:
    return s.encode("utf-8")


def _s(b: Any) -> str | None:
    return None if b is None else bytes(b).decode("utf-8", "surrogateescape")


def run_gateway(rt: Any, vector: Vector) -> tuple[str | None, str | None, bool]:
    """(tag header, baggage header, route cache cleared) after the gateway script ran."""
    pairs = [(b":authority", _b(HOST)), (b":path", _b(vector.target)),
             *((_b(k), _b(v)) for k, v in vector.parsed_headers())]
    table = rt.table_from([rt.table_from(list(p)) for p in pairs])
    handle = rt.globals().make_handle(table)
    rt.globals().envoy_on_request(handle)
    headers = handle.headers(handle)
    return _s(headers.get(headers, b"x-mse-tag")), _s(headers.get(headers, b"baggage")), bool(handle.cleared)


def test_table_has_enough_deterministic_vectors() -> None:
    config = conformance_config()
    fixed = [v for v in conformance_vectors() if len(python_lanes(config.rules, v.view(HOST), "base")) == 1]
    assert len(fixed) >= 200
    lanes = {next(iter(python_lanes(config.rules, v.view(HOST), "base"))) for v in fixed}
    assert lanes == {"base", "gray", "dev-alice", "canary", "frozen"}  # every rule kind is exercised


def test_gateway_lua_colors_every_vector_like_python(gateway: Any) -> None:
    config = conformance_config()
    disagreements = []
    for vector in conformance_vectors():
        expected = python_lanes(config.rules, vector.view(HOST), config.default_lane)
        tag, carried, cleared = run_gateway(gateway, vector)
        if tag not in expected:
            disagreements.append(f"{vector}: lua {tag!r}, python {sorted(expected)}")
        assert cleared, "the route must be recomputed after the tag changed"
        assert py_baggage.get_member([carried or ""], config.tag.baggage_key) == tag
    assert not disagreements, "\n".join(disagreements)


def test_gateway_replaces_client_supplied_lane_and_keeps_other_baggage(gateway: Any) -> None:
    vector = Vector("spoof", (("x-mse-tag", "canary"), ("x-mse-tag", "gray"),
                              ("baggage", "a=1, lane=canary;p=x"), ("baggage", "b=2;q")))
    tag, carried, _ = run_gateway(gateway, vector)
    assert tag == "base"
    assert carried == "lane=base,a=1,b=2;q"


def test_keyless_percentage_is_a_fair_random_draw(gateway: Any) -> None:
    gateway.execute(b"math.randomseed(12345)")
    draws = 2000
    gray = sum(run_gateway(gateway, Vector("coin", (), RANDOM_RULE_QUERY))[0] == "gray" for _ in range(draws))
    assert 0.44 * draws < gray < 0.56 * draws  # percent: 50


def test_unrelated_rules_do_not_change_the_default(gateway: Any) -> None:
    assert run_gateway(gateway, Vector("plain", (("accept", "*/*"),)))[0] == "base"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=40), salt=st.text(max_size=5))
def test_fnv_matches_lane_hashing(mods: Any, data: bytes, salt: str) -> None:
    assert int(mods.fnv.fnv1a32(data)) == fnv1a_32(data)
    key = data.decode("utf-8", "replace")
    assert int(mods.fnv.bucket(_b(key), _b(salt))) == fnv1a_32((salt + key).encode()) % 100


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=24) | st.text(max_size=12).map(lambda t: t.encode()))
def test_utf8_handling_matches_python_decoding(mods: Any, raw: bytes) -> None:
    assert bytes(mods.text.sanitize(raw)) == raw.decode("utf-8", "replace").encode()
    cps, n = mods.text.codepoints(raw)
    assert [int(cps[i]) for i in range(1, int(n) + 1)] == [ord(c) for c in raw.decode("utf-8", "surrogateescape")]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from(" \t\x1c\x85\xa0\u2003\u3000ab=é;"), max_size=10))
def test_strip_matches_python_str_strip(mods: Any, text: str) -> None:
    assert bytes(mods.text.pystrip(_b(text))).decode() == text.strip()


def _lua_members(values: Sequence[str]) -> bytes:
    return _b(",".join(values))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.text(alphabet=st.sampled_from("lane=gray%20,; \tx+-1"), max_size=16), min_size=1, max_size=3))
def test_baggage_matches_lane_baggage(mods: Any, values: list[str]) -> None:
    joined = _lua_members(values)  # Envoy's headers:get joins repeated baggage headers with ","
    assert _s(mods.baggage.get_member(joined, b"lane")) == py_baggage.get_member(values, "lane")
    assert _s(mods.baggage.remove_member(joined, b"lane")) == py_baggage.remove_member(values, "lane")
    assert _s(mods.baggage.set_member(joined, b"lane", b"gray")) == py_baggage.set_member(values, "lane", "gray")


REGEX_CASES: tuple[tuple[str, str], ...] = (
    (r"(?:xiao|da)ming(-\d{1,3})?", "xiaomingda-0123456789mé"),
    (r"[\w.+-]+@(example|test)\.(com|org)$", "ab.+-@exampltsco.rg\n"),
    (r"c[a-z]*|ç[^0-9]?", "cçaz09Z"),
    (r"a*?b+?c??", "abc"),
    (r"(a|ab)(c|bcd)(d*)", "abcd"),
    (r"^(?P<x>\s*)\S+$", " \tab\n"),
    (r"[^\W\d]{2,}", "a1_é"),
    (r"[]a-]+|\x41\.", "]a-A."),
    (r"(a*)*b", "aab"),
    (r"(?:|x)y{0,2}", "xy"),
    (r".{3}", "a\nbé"),
    (r"\D\W\S", "a -1"),
    (r"(a|b)+$", "ab\n"),
    (r"^a$\n?", "a\n"),
    (r"\s+\S?", " \v\t\n\f\rx"),
    (r".*[^a]?", "a\udcff\udc80é"),  # lone surrogates: invalid UTF-8 bytes (surrogateescape)
)


@pytest.mark.parametrize(("pattern", "alphabet"), REGEX_CASES)
def test_regex_matcher_matches_python_fullmatch(lua: Any, mods: Any, pattern: str, alphabet: str) -> None:
    """The Lua matcher answers what the Python data plane's engine (RE2 on the wire bytes) answers."""
    match = ValueMatch("regex", pattern)
    program = mods.regex.compile(lua.eval(_b(to_lua(cast(Any, parse_regex(pattern))))))

    def agree(subject: str) -> None:
        cps, n = mods.text.codepoints(subject.encode("utf-8", "surrogateescape"))
        assert bool(mods.regex.fullmatch(program, cps, n)) == match.test(subject), subject

    @settings(max_examples=250, deadline=None)
    @given(st.text(alphabet=alphabet, max_size=8))
    def check(subject: str) -> None:
        agree(subject)

    check()
    for subject in _samples(pattern):
        agree(subject)


def _samples(pattern: str) -> Iterator[str]:
    yield from ("", "xiaoming", "daming-12", "ann@example.com", "ann@example.com\n", "çx", "aab", "yy", "abcd",
                " ab\n", "ab\n", "a\n\n")


def test_sidecar_copies_lane_from_baggage_only_when_the_tag_is_missing_or_invalid() -> None:
    config = parse_config(
        "tag: {baggage_key: lane}\nlanes: {gray: {}}\nentry: a\nservices: {a: {instances: {base: ['127.0.0.1:1']}}}\n",
        "sidecar.yaml",
    )
    rt = _runtime(sidecar_lua(config))

    def outcome(*headers: tuple[str, str]) -> tuple[str | None, bool]:
        table = rt.table_from([rt.table_from([_b(k), _b(v)]) for k, v in headers])
        handle = rt.globals().make_handle(table)
        rt.globals().envoy_on_request(handle)
        h = handle.headers(handle)
        return _s(h.get(h, b"x-mse-tag")), bool(handle.cleared)

    assert outcome(("baggage", "a=1, lane=gray;p")) == ("gray", True)
    assert outcome(("x-mse-tag", "canary"), ("baggage", "lane=gray")) == ("canary", False)
    assert outcome(("x-mse-tag", "Not Valid"), ("baggage", "lane=gray")) == ("gray", True)
    assert outcome(("baggage", "lane=Not%20Valid")) == (None, False)
    assert outcome() == (None, False)


def test_python_view_of_vectors_uses_parsed_headers() -> None:
    view = Vector("v", (("X-Dev", " alice \t"),)).view()
    assert view == RequestView.from_parts([("x-dev", "alice")])


def _lua_instructions(lua: Any, mods: Any, pattern: str, subject: str) -> tuple[bool, int]:
    """Whether the Lua matcher fully matches, and how many Lua VM instructions it ran (a count
    hook every 100 instructions, interpreter only so JIT traces cannot hide any work)."""
    program = mods.regex.compile(lua.eval(_b(to_lua(cast(Any, parse_regex(pattern))))))
    cps, n = mods.text.codepoints(_b(subject))
    counted = lua.execute(b"""
        local fullmatch, prog, cps, n = ...
        local ticks = 0
        if jit then jit.off(fullmatch, true) end
        debug.sethook(function() ticks = ticks + 1 end, "", 100)
        local ok = fullmatch(prog, cps, n)
        debug.sethook()
        if jit then jit.on(fullmatch, true) end
        return ok, ticks * 100
    """, mods.regex.fullmatch, program, cps, n)
    return bool(counted[0]), int(counted[1])


@pytest.mark.parametrize("pattern", ["(a|a)*b", "(a*)*b", "(x+x+)+y", "(a|aa)*c"])
def test_regex_matcher_work_grows_linearly_with_the_value(lua: Any, mods: Any, pattern: str) -> None:
    # A backtracker doubles its work per character on these; the NFA simulation visits each
    # (state, position) at most once, so 10x the value costs about 10x the instructions.
    letter = "x" if "x" in pattern else "a"
    matched, small = _lua_instructions(lua, mods, pattern, letter * 500)
    assert not matched
    matched, large = _lua_instructions(lua, mods, pattern, letter * 5000)
    assert not matched
    assert large < 12 * small, (small, large)
    states = int(mods.regex.compile(lua.eval(_b(to_lua(cast(Any, parse_regex(pattern))))))[b"n"])
    assert large < 5000 * states * 60  # a few dozen instructions per (state, character)
    assert _lua_instructions(lua, mods, pattern, letter * 30 + pattern[-1])[0]
