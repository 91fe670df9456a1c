"""The robust W3C baggage functions (lane/core/baggage.py), compared with OpenTelemetry's stock propagator."""

from __future__ import annotations

import time
from urllib.parse import unquote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from opentelemetry import baggage as otel_baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context

from lane.core.baggage import (
    MAX_BAGGAGE_CHARS,
    MAX_MEMBERS,
    decode_value,
    encode_value,
    get_member,
    members,
    remove_member,
    set_member,
    set_members,
)
from lane.core.wire import REQUEST_MEMBER

KEY = "x-mse-tag"


def stock_read(*headers: str) -> dict[str, object]:
    """What OpenTelemetry's W3CBaggagePropagator extracts from these ``baggage`` headers."""
    ctx = W3CBaggagePropagator().extract({"baggage": list(headers)}, context=Context())
    return dict(otel_baggage.get_all(ctx))


def filler(n: int, size: int = 1) -> list[str]:
    return [f"k{i}={'v' * size}" for i in range(n)]


# --- get_member -------------------------------------------------------------------------------


def test_finds_member_among_others() -> None:
    assert get_member(["user=alice, x-mse-tag=gray ,region=eu"], KEY) == "gray"


def test_missing_member_is_none() -> None:
    assert get_member(["user=alice"], KEY) is None
    assert get_member([], KEY) is None


def test_properties_are_ignored() -> None:
    assert get_member(["x-mse-tag=gray;ttl=10;owner"], KEY) == "gray"


def test_whitespace_around_equals_is_optional() -> None:
    assert get_member(["a=1,  x-mse-tag \t= gray\t ; p=1"], KEY) == "gray"


def test_first_member_wins() -> None:
    assert get_member(["x-mse-tag=gray,x-mse-tag=base"], KEY) == "gray"


def test_reads_across_multiple_headers_unlike_stock() -> None:
    headers = ["user=alice,region=eu", "x-mse-tag=gray"]
    assert get_member(headers, KEY) == "gray"
    assert KEY not in stock_read(*headers)  # the stock propagator reads only the first header


def test_plus_stays_plus_unlike_stock() -> None:
    assert get_member(["x-mse-tag=a+b"], KEY) == "a+b"
    assert stock_read("x-mse-tag=a+b")[KEY] == "a b"


def test_percent_encoding_is_decoded() -> None:
    assert get_member(["x-mse-tag=a%20b%2Bc%2C%3B%25"], KEY) == "a b+c,;%"


def test_bad_percent_escapes_are_kept_literally() -> None:
    assert get_member(["x-mse-tag=100%zz%"], KEY) == "100%zz%"


def test_empty_value_is_empty_string() -> None:
    assert get_member(["x-mse-tag="], KEY) == ""


def test_member_without_equals_is_not_a_match() -> None:
    assert get_member(["x-mse-tag,x-mse-tag=gray"], KEY) == "gray"


def test_percent_encoded_key_matches() -> None:
    assert get_member(["x%2Dmse%2Dtag=gray"], KEY) == "gray"


def test_keys_are_case_sensitive() -> None:
    assert get_member(["X-MSE-TAG=gray"], KEY) is None


def test_oversized_header_keeps_lane_unlike_stock() -> None:
    header = ",".join([*filler(50, 200), "x-mse-tag=gray"])
    assert len(header) > 8192
    assert get_member([header], KEY) == "gray"
    assert stock_read(header) == {}  # stock drops all baggage above 8192 bytes


def test_more_than_180_members_keeps_lane_unlike_stock() -> None:
    header = ",".join([*filler(300), "x-mse-tag=gray"])
    assert get_member([header], KEY) == "gray"
    assert KEY not in stock_read(header)  # stock keeps only the first 180 members


def test_lane_beyond_the_member_bound_is_not_read() -> None:
    header = ",".join([*filler(MAX_MEMBERS), "x-mse-tag=gray"])
    assert get_member([header], KEY) is None
    assert get_member([",".join([*filler(MAX_MEMBERS - 1), "x-mse-tag=gray"])], KEY) == "gray"


def test_member_cut_by_the_size_bound_is_dropped_not_misread() -> None:
    pad = "p=" + "v" * (MAX_BAGGAGE_CHARS - len("p=,x-mse-tag=gray"))
    assert get_member([pad + ",x-mse-tag=gray"], KEY) == "gray"  # ends exactly on the bound
    assert get_member([pad + ",x-mse-tag=gray-canary"], KEY) is None  # would be cut to a prefix


def test_huge_input_costs_bounded_time() -> None:
    headers = ["a=" + "v" * 10_000_000, ",".join(["x=1"] * 200_000), "x-mse-tag=gray"]
    started = time.perf_counter()
    assert get_member(headers, KEY) is None
    assert remove_member(headers, KEY) is None  # the only member within the bound was cut
    assert set_member(headers, KEY, "gray") == "x-mse-tag=gray"
    many = [",".join(["x=1"] * 200_000), "x-mse-tag=gray"]
    assert get_member(many, KEY) is None
    assert remove_member(many, KEY) == ",".join(["x=1"] * MAX_MEMBERS)
    assert time.perf_counter() - started < 2.0


def test_commas_only_yield_nothing() -> None:
    assert list(members([",,, ,\t,"])) == []
    assert remove_member([",,,"], KEY) is None


def test_non_string_values_are_skipped() -> None:
    assert get_member([b"x-mse-tag=base", None, "x-mse-tag=gray"], KEY) == "gray"  # type: ignore[list-item]


# --- remove_member / set_member ---------------------------------------------------------------


def test_remove_keeps_other_members_byte_for_byte_in_order() -> None:
    headers = ["z=1;prop=a%20b", "x-mse-tag=gray;p", "a=%2B+", "x-mse-tag=base,m = 2 "]
    assert remove_member(headers, KEY) == "z=1;prop=a%20b,a=%2B+,m = 2"


def test_remove_of_only_member_is_none() -> None:
    assert remove_member(["x-mse-tag=gray", " x-mse-tag=base "], KEY) is None


def test_set_puts_lane_first_and_replaces_every_old_entry() -> None:
    headers = ["user=alice;p=1,x-mse-tag=base", "x-mse-tag=stale,region=eu"]
    assert set_member(headers, KEY, "gray") == "x-mse-tag=gray,user=alice;p=1,region=eu"


def test_set_on_nothing() -> None:
    assert set_member([], KEY, "gray") == "x-mse-tag=gray"


def test_set_member_survives_truncation_by_a_size_limited_hop() -> None:
    rewritten = set_member([",".join(filler(100, 200))], KEY, "gray")
    assert get_member([rewritten[:8192]], KEY) == "gray"


def test_set_encodes_reserved_characters_and_plus() -> None:
    header = set_member([], KEY, "a b+c,d;e=f%")
    assert header == "x-mse-tag=a%20b%2Bc%2Cd%3Be%3Df%25"
    assert stock_read(header)[KEY] == "a b+c,d;e=f%"  # the stock reader agrees on what was written


def test_set_encodes_a_key_that_is_not_a_token() -> None:
    header = set_member(["a=1"], "lane key", "gray")
    assert header == "lane%20key=gray,a=1"
    assert get_member([header], "lane key") == "gray"


# --- properties -------------------------------------------------------------------------------

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.*", min_size=1, max_size=12)
# W3C baggage-octet: printable ASCII except space, DQUOTE, comma, semicolon and backslash.
OCTETS = st.text(alphabet=[chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;\\'], max_size=20)
PROPERTY = st.builds(lambda k, v: f";{k}={v}" if v else f";{k}", TOKEN, OCTETS)
OWS = st.sampled_from(["", " ", "\t", "  "])


@st.composite
def member(draw: st.DrawFn, keys: st.SearchStrategy[str] = TOKEN) -> tuple[str, str, str]:
    """(raw member text, key, raw value)."""
    key, value = draw(keys), draw(OCTETS)
    props = "".join(draw(st.lists(PROPERTY, max_size=2)))
    return f"{key}{draw(OWS)}={draw(OWS)}{value}{props}", key, value


MEMBERS = st.lists(member(st.one_of(TOKEN, st.just(KEY))), max_size=30)


@st.composite
def headers_of(draw: st.DrawFn) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Members spread over one to three header values with optional whitespace and empty entries."""
    ms = draw(MEMBERS)
    cuts = sorted(draw(st.lists(st.integers(0, len(ms)), max_size=2)))
    headers, start = [], 0
    for cut in [*cuts, len(ms)]:
        sep = draw(st.sampled_from([",", ", ", " ,\t", ",,"]))
        headers.append(sep.join(m[0] for m in ms[start:cut]))
        start = cut
    return headers, ms


@given(headers_of())
def test_get_member_matches_reference_model(case: tuple[list[str], list[tuple[str, str, str]]]) -> None:
    headers, ms = case
    expected = next((unquote(value, errors="replace") for _, key, value in ms if key == KEY), None)
    assert get_member(headers, KEY) == expected


@given(headers_of())
def test_remove_member_keeps_the_rest_in_order(case: tuple[list[str], list[tuple[str, str, str]]]) -> None:
    headers, ms = case
    kept = [raw.strip(" \t") for raw, key, _ in ms if key != KEY]
    assert remove_member(headers, KEY) == (",".join(kept) if kept else None)


@given(headers_of(), st.text(max_size=40))
def test_set_member_round_trips_any_value(case: tuple[list[str], list[tuple[str, str, str]]], value: str) -> None:
    headers, _ = case
    header = set_member(headers, KEY, value)
    assert get_member([header], KEY) == value
    assert header.split(",", 1)[0].startswith(f"{KEY}=")
    rest = header.split(",", 1)[1] if "," in header else None
    assert rest == remove_member(headers, KEY)


@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40))
def test_encoded_values_are_baggage_octets_and_stock_compatible(value: str) -> None:
    encoded = encode_value(value)
    assert all(0x21 <= ord(c) < 0x7F and c not in '",;\\+' for c in encoded)
    assert decode_value(encoded) == value
    assert stock_read(f"{KEY}={encoded}")[KEY] == value.strip()  # stock strips whitespace, nothing else


@settings(max_examples=300)
@given(st.lists(st.text(max_size=200), max_size=4), st.text(max_size=20))
def test_arbitrary_text_never_raises(headers: list[str], key: str) -> None:
    get_member(headers, key)
    remove_member(headers, key)
    assert isinstance(set_member(headers, key, "gray"), str)


@pytest.mark.parametrize("value", ["\ud800", "a\udcff"])
def test_lone_surrogates_do_not_raise(value: str) -> None:
    assert get_member([set_member([value], KEY, value)], KEY) is not None


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=40))
@example("a+b")  # a plus is not unreserved
@example("gray lane")
@example("grün")
@example("")
def test_a_value_is_percent_encoded_exactly_as_quote_does_with_or_without_the_fast_path(value: str) -> None:
    """Values with nothing to encode skip `quote` (one per request): the result is still `quote`'s."""
    from urllib.parse import quote

    from lane.core.baggage import encode_value

    assert encode_value(value) == quote(value, safe="", errors="replace")
    uuid_like = "3e2f3a8c-9b1d-4c1e-8f7a-" + "".join(c for c in value if c.isascii() and c.isalnum())
    assert encode_value(uuid_like) == uuid_like == quote(uuid_like, safe="")


_MEMBER = st.sampled_from(["x-mse-tag=gray", "lane-request-id=r1", "x%2Dmse%2Dtag=base", "user=alice;p=1", "a=b",
                           " region = eu ", "broken", "", "x-mse-tag", "k=" + "v" * 30])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_MEMBER, max_size=5).map(",".join), max_size=3),
       st.sampled_from(["gray", "base", "grün", "a" * 30]), st.one_of(st.none(), st.text(min_size=1, max_size=40)))
def test_set_members_puts_the_pairs_first_and_keeps_every_other_member(
        headers: list[str], lane: str, request_id: str | None) -> None:
    """The reference is the member-by-member definition: the pairs, encoded, then what `remove_member`
    leaves of the headers once every pair's key is removed (escaped keys match their decoded name)."""
    pairs = [(KEY, lane)] if request_id is None else [(KEY, lane), (REQUEST_MEMBER, request_id)]
    rest: str | None = ",".join(headers)
    for key, _ in pairs:
        rest = remove_member([rest], key) if rest is not None else None
    expected = ",".join([f"{key}={encode_value(value)}" for key, value in pairs] + ([rest] if rest else []))
    assert set_members(headers, pairs) == expected


_PIECES = st.sampled_from([",", " ", "\t", "k=v", "x-mse-tag=gray", "%78-mse-tag=base", ";p=1", "=", "a", "\u00e9"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, max_size=30).map("".join), st.integers(min_value=0, max_value=3))
@example("a," * 1023 + "a", 0)  # 2047 characters: the fast path's longest, at MAX_MEMBERS exactly
@example("a," * 1024 + "a", 0)  # 2049 characters and one member past the bound: the general reader
@example("a," * 1024, 0)
def test_the_split_fast_path_reads_the_same_members_as_the_bounded_reader(value: str, pad: int) -> None:
    """`get_member`/`set_members` split one short value at C speed; the bounded generator is the reference."""
    from lane.core.baggage import _member_list

    value = value + "," * pad
    for headers in ([value], (value,), [value, "k2=v2"]):
        assert list(_member_list(headers)) == list(members(headers))
    key = "x-mse-tag"
    reference = next((decode_value(m.partition("=")[2].partition(";")[0].strip(" \t")) for m in members([value])
                      if "=" in m and decode_value(m.partition("=")[0].strip(" \t")) == key), None)
    assert get_member([value], key) == reference
