"""One trace identity in every format: what a sidecar hands its app and gives the app's calls back.

The formats are checked against the real OpenTelemetry propagators (W3C tracecontext from the API,
B3 and Jaeger from their PyPI packages): what lane writes must extract to the same trace id there,
as Envoy's and the OTel SDKs' headers do.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from urllib.parse import unquote

import pytest
from multidict import CIMultiDict
from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
from opentelemetry.propagators.jaeger import JaegerPropagator

from lane.core.config import DEFAULT_TRACE_HEADERS
from lane.dataplane.trace_cache import trace_keys
from lane.dataplane.trace_identity import TraceIdentity, complete_trace_headers, identity_of

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
ALL = DEFAULT_TRACE_HEADERS


def _trace_ids(headers: CIMultiDict[str]) -> dict[str, str]:
    """The 128-bit trace id each format carries, as 32 hex digits."""
    sw8 = headers["sw8"].split("-")
    return {
        "traceparent": headers["traceparent"].split("-")[1],
        "x-b3-traceid": headers["x-b3-traceid"].zfill(32),
        "b3": headers["b3"].split("-")[0].zfill(32),
        "uber-trace-id": unquote(headers["uber-trace-id"]).split(":")[0].zfill(32),
        "sw8": base64.b64decode(sw8[1]).decode(),
    }


@pytest.mark.parametrize("incoming", [
    {"traceparent": f"00-{TRACE}-{SPAN}-01"},
    {"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-sampled": "1"},
    {"b3": f"{TRACE}-{SPAN}-1"},
    {"uber-trace-id": f"{TRACE}:{SPAN}:0:1"},
    {"uber-trace-id": f"{TRACE}%3A{SPAN}%3A0%3A1"},
])
def test_every_format_is_written_from_the_one_trace_id_that_came_in(incoming: dict[str, str]) -> None:
    headers = CIMultiDict(incoming)
    completed = complete_trace_headers(headers, ALL, service="b")
    identity = completed.identity
    assert identity.trace_hex == TRACE and identity.span_hex == SPAN and identity.sampled
    assert set(_trace_ids(headers).values()) == {TRACE}
    assert len(headers["x-request-id"]) == 36  # a UUID of its own, not derived from the trace
    for name, value in incoming.items():
        assert headers.getall(name) == [value]  # what came in is kept byte for byte
    # and every format is a key the sidecar can recall the lane by, whichever one the app forwards: one
    # cache entry for the trace, one for the request; the keys of what was written are known without
    # parsing it back, and equal what parsing gives
    for name in ALL:
        assert trace_keys(headers, [name]) == [("request", headers["x-request-id"]) if name == "x-request-id"
                                              else ("trace", TRACE)]
    assert completed.keys == trace_keys(headers, ALL) == [("trace", TRACE), ("request", headers["x-request-id"])]


def test_a_64_bit_b3_id_is_zero_padded_as_the_opentelemetry_b3_propagator_does() -> None:
    headers = CIMultiDict({"x-b3-traceid": "463ac35c9f6413ad", "x-b3-spanid": SPAN})
    complete_trace_headers(headers, ALL)
    assert headers["traceparent"].split("-")[1] == "0000000000000000463ac35c9f6413ad"
    assert headers["x-b3-traceid"] == "463ac35c9f6413ad"


def test_nothing_in_means_one_new_identity_everywhere_and_unsampled_stays_unsampled() -> None:
    headers: CIMultiDict[str] = CIMultiDict()
    identity = complete_trace_headers(headers, ALL).identity
    assert set(_trace_ids(headers).values()) == {identity.trace_hex}
    headers = CIMultiDict({"traceparent": f"00-{TRACE}-{SPAN}-00"})
    complete_trace_headers(headers, ALL)
    assert headers["x-b3-sampled"] == "0" and headers["b3"].endswith("-0") and headers["uber-trace-id"].endswith(":0")


def test_only_the_configured_formats_are_written() -> None:
    headers = CIMultiDict({"traceparent": f"00-{TRACE}-{SPAN}-01"})
    complete_trace_headers(headers, ("traceparent", "x-request-id"))
    assert sorted(headers) == ["traceparent", "x-request-id"]


def test_a_format_sent_twice_with_different_values_is_replaced_by_one() -> None:
    other = "11111111111111111111111111111111"
    headers = CIMultiDict([("traceparent", f"00-{TRACE}-{SPAN}-01"), ("traceparent", f"00-{other}-{SPAN}-01"),
                           ("x-request-id", "r1"), ("x-request-id", "r2")])
    identity = complete_trace_headers(headers, ALL).identity
    assert identity.trace_hex not in (TRACE, other)
    assert len(headers.getall("traceparent")) == 1 and len(headers.getall("x-request-id")) == 1
    assert headers["x-request-id"] not in ("r1", "r2")


def test_a_call_that_dropped_its_trace_headers_gets_the_served_requests_back() -> None:
    served = TraceIdentity(TRACE, SPAN, True)
    call = CIMultiDict({"x-request-id": "r1"})  # an app forwarding only x-request-id
    complete_trace_headers(call, ALL, fallback=served, request_id="ignored: the call has its own")
    assert set(_trace_ids(call).values()) == {TRACE} and call["x-request-id"] == "r1"
    call = CIMultiDict({"traceparent": f"00-{'2' * 32}-{SPAN}-01"})  # an app that continued its own trace
    complete_trace_headers(call, ALL, fallback=served, request_id="r1")
    assert set(_trace_ids(call).values()) == {"2" * 32} and call["x-request-id"] == "r1"


@pytest.mark.parametrize("garbage", [
    {"traceparent": "00-00000000000000000000000000000000-b7ad6b7169203331-01"},
    {"traceparent": f"ff-{TRACE}-{SPAN}-01"},
    {"x-b3-traceid": "not hex"},
    {"b3": "0"},
    {"uber-trace-id": "a:b"},
    {"uber-trace-id": "x" * 300 + ":1:0:1"},
])
def test_garbage_is_no_identity_and_never_raises(garbage: dict[str, str]) -> None:
    assert identity_of(CIMultiDict(garbage)) is None


def test_what_lane_writes_extracts_to_the_same_trace_in_opentelemetry() -> None:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    headers: CIMultiDict[str] = CIMultiDict({"b3": f"{TRACE}-{SPAN}-1"})
    complete_trace_headers(headers, ALL)
    carrier = {k.lower(): v for k, v in headers.items()}
    span = trace.get_current_span(TraceContextTextMapPropagator().extract(carrier)).get_span_context()
    assert f"{span.trace_id:032x}" == TRACE and f"{span.span_id:016x}" == SPAN and span.trace_flags.sampled
    for propagator in (B3MultiFormat(), B3SingleFormat()):
        ctx = trace.get_current_span(propagator.extract(carrier)).get_span_context()
        assert f"{ctx.trace_id:032x}" == TRACE
    ctx = trace.get_current_span(JaegerPropagator().extract(carrier)).get_span_context()
    assert f"{ctx.trace_id:032x}" == TRACE


def _mixes(count: int) -> Iterator[tuple[int, list[tuple[str, str]]]]:
    """*count* reproducible mixes of valid, garbage, repeated and conflicting trace headers, every format."""
    import random

    choices: dict[str, list[str]] = {
        "traceparent": [f"00-{TRACE}-{SPAN}-01", f" 00-{TRACE.upper()}-{SPAN}-00 ", "00-bad", f"ff-{TRACE}-{SPAN}-01",
                        f"00-{TRACE}-{'0' * 16}-01", f"01-{TRACE}-{SPAN}-01-extra"],
        "x-request-id": ["r1", "r 2", "", "x" * 300],
        "x-b3-traceid": [TRACE, TRACE[16:], "zz"],
        "x-b3-spanid": [SPAN, "nope"],
        "b3": [f"{TRACE}-{SPAN}-1", "0", f"{TRACE[16:]}-{SPAN}", f"{TRACE}0-{SPAN}-1", f"{TRACE.upper()}-{SPAN}-1"],
        "uber-trace-id": [f"{TRACE}:{SPAN}:0:1", "a:b", f"{TRACE}f:{SPAN}:0:1", f"{TRACE}%3A{SPAN}%3A0%3A1"],
        "sw8": ["1-" + base64.b64encode(TRACE.encode()).decode() + "-x-0-a-b-c-d", "1-2-3"],
        "x-my-trace": ["abc", "ab c"],
    }
    rng = random.Random(7)
    for case in range(count):
        pairs = []
        for name, values in choices.items():
            for _ in range(rng.choice((0, 0, 1, 1, 2))):  # absent, once, or twice (equal or conflicting)
                pairs.append((name, rng.choice(values)))
        rng.shuffle(pairs)
        yield case, pairs


def test_the_identity_reported_is_the_one_the_completed_headers_carry() -> None:
    """The inbound side takes the request's identity from `complete_trace_headers` (one parse of
    ``traceparent`` for its key and its identity) instead of reading the headers again: on every mix it
    is the identity `identity_of` reads from the completed headers, and the keys are the ones read back."""
    names = (*ALL, "x-my-trace")
    for _, pairs in _mixes(3000):
        headers = CIMultiDict(pairs)
        completed = complete_trace_headers(headers, names, service="s")
        assert completed.identity == identity_of(headers), pairs
        assert list(completed.keys) == trace_keys(headers, names), pairs


def test_keys_the_outbound_side_already_read_change_nothing_that_is_written() -> None:
    """A sidecar's outbound side hands `complete_trace_headers` the keys it read (*known*) so present
    headers are not parsed twice: on every mix of valid, garbage, repeated and conflicting headers the
    headers written and the keys reported are exactly those of a run that parses everything itself."""
    import random

    from lane.dataplane.trace_cache import trace_key_sources

    names = (*ALL, "x-my-trace")
    for case, pairs in _mixes(3000):
        plain, given = CIMultiDict(pairs), CIMultiDict(pairs)
        known = {name: key for key, name in trace_key_sources(given, names)}
        random.seed(case)  # minted ids come from `random`: both runs mint the same ones
        expected = complete_trace_headers(plain, names, service="s")
        expected_identity = expected.identity  # read at once, as the inbound side does
        random.seed(case)
        got = complete_trace_headers(given, names, service="s", known=known)
        assert list(got.keys) == list(expected.keys) and got.identity == expected_identity, pairs
        assert list(given.items()) == list(plain.items()), pairs


@pytest.mark.parametrize("span", [None, "nope", "0" * 16])
def test_a_b3_trace_id_without_a_usable_span_id_is_written_whole(span: str | None) -> None:
    """Half a B3 context (no span id, or one that is no id) is not handed on: the app would forward a span
    id no tracer reads, and the identity the sidecar keeps would be a new random span on every read."""
    headers = CIMultiDict({"x-b3-traceid": TRACE, **({"x-b3-spanid": span} if span is not None else {})})
    completed = complete_trace_headers(headers, ALL, service="b")
    identity = completed.identity
    assert identity.trace_hex == TRACE and headers["x-b3-spanid"] == identity.span_hex != span
    assert identity_of(headers) == identity == identity_of(headers)
    assert headers["traceparent"] == f"00-{TRACE}-{identity.span_hex}-01"
