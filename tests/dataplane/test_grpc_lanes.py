"""gRPC calls keep their lane through real ``lane gateway`` and ``lane sidecar`` processes (issue 16).

A real ``grpcio`` client dials the gateway (h2c, prior knowledge, on its one port); each app is a real
``grpcio`` server behind its own sidecar, calling the next service through its sidecar's outbound port
(`tests.support.grpc_chain`): gateway -> a -> b (no gray) -> c. The hop record comes back as response
metadata (``x-lane-path``), each app reports the lane it ran in and the lane metadata it received, so
every assertion is about what went over the wire. Nothing here is faked.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from lane.core.hops import PATH_HEADER, SERVED_HEADER, Hop, parse_path
from tests.support.grpc_chain import GRAY_USER, VIP_USER, GrpcChain, grpc_chain

pytestmark = pytest.mark.timeout(240)

SERVICE: Final = "/lanetest.Chain/"
CALL_TIMEOUT: Final = 20.0
KINDS: Final = ("unary", "server_stream", "client_stream", "bidi")
Metadata = tuple[tuple[str, str], ...]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcChain]:
    with grpc_chain(tmp_path_factory.mktemp("grpc-chain")) as running:
        yield running


@pytest.fixture
def channel(chain: GrpcChain) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(chain.gateway) as ch:
        yield ch


def _meta(user: str, *extra: tuple[str, str]) -> Metadata:
    return (("x-user", user), *extra)


def _hops(metadata: Any) -> list[Hop]:
    return list(parse_path([str(v) for k, v in metadata or () if k == PATH_HEADER]))


def _labels(hops: list[Hop]) -> list[str]:
    return [hop.label() for hop in hops]


def _apps(report: dict[str, Any]) -> list[str]:
    """``service@lane`` of each app down the chain, as each reported itself."""
    out = []
    node: Any = report
    while isinstance(node, dict) and "service" in node:
        out.append(f"{node['service']}@{node['lane']}")
        node = node.get("next")
    return out


def _tags(report: dict[str, Any]) -> list[list[str]]:
    """The tag metadata each app received, down the chain."""
    out = []
    node: Any = report
    while isinstance(node, dict) and "service" in node:
        out.append(node["received"]["x-mse-tag"])
        node = node.get("next")
    return out


def call(channel: grpc.Channel, kind: str, metadata: Metadata) -> tuple[list[dict[str, Any]], list[Hop]]:
    """One RPC of *kind* through the chain: the reports it answered with, and the hop record."""
    if kind == "unary":
        answer, rpc = channel.unary_unary(SERVICE + "Unary").with_call(b"hello", metadata=metadata,
                                                                       timeout=CALL_TIMEOUT)
        return [json.loads(answer)], _hops(rpc.initial_metadata())
    if kind == "client_stream":
        answer, rpc = channel.stream_unary(SERVICE + "ClientStream").with_call(
            iter([b"m1", b"m2", b"m3"]), metadata=metadata, timeout=CALL_TIMEOUT)
        return [json.loads(answer)], _hops(rpc.initial_metadata())
    if kind == "server_stream":
        stream = channel.unary_stream(SERVICE + "ServerStream")(b"hello", metadata=metadata, timeout=CALL_TIMEOUT)
    else:
        stream = channel.stream_stream(SERVICE + "Bidi")(iter([b"x", b"y"]), metadata=metadata, timeout=CALL_TIMEOUT)
    reports = [json.loads(message) for message in stream]
    return reports, _hops(stream.initial_metadata())


def problems(kind: str, lane: str, reports: list[dict[str, Any]], hops: list[Hop]) -> list[str]:
    found = []
    expected = [f"a@{lane}", "b@base", f"c@{lane}"]
    if _labels(hops) != expected:
        found.append(f"hop record {_labels(hops)}, expected {expected}")
    wanted = {"unary": 1, "client_stream": 1, "server_stream": 3, "bidi": 2}[kind]
    if len(reports) != wanted:
        found.append(f"{len(reports)} messages, expected {wanted}")
    for report in reports:
        if _apps(report) != expected:
            found.append(f"apps ran as {_apps(report)}, expected {expected}")
        if any(tags != [lane] for tags in _tags(report)):
            found.append(f"apps received tags {_tags(report)}, expected [{lane!r}] at each")
    if kind == "client_stream" and reports and _last(reports[0]).get("messages") != ["m1", "m2", "m3"]:
        found.append(f"c received {_last(reports[0]).get('messages')}")
    if kind == "bidi" and [_last(r).get("echo") for r in reports] != ["x", "y"]:
        found.append(f"c echoed {[_last(r).get('echo') for r in reports]}")
    return found


def _last(report: dict[str, Any]) -> dict[str, Any]:
    while isinstance(report.get("next"), dict):
        report = report["next"]
    return report


@pytest.mark.parametrize("kind", KINDS)
def test_gray_call_returns_to_gray_after_the_base_only_service(chain: GrpcChain, channel: grpc.Channel,
                                                                kind: str) -> None:
    reports, hops = call(channel, kind, _meta(GRAY_USER))
    found = problems(kind, "gray", reports, hops)
    assert not found, "; ".join(found) + f"\n{reports}\n{chain.tail()}"
    assert (hops[1].requested, hops[1].fallback) == ("gray", "no-instance"), hops[1]


@pytest.mark.parametrize("kind", KINDS)
def test_base_call_stays_base_everywhere(chain: GrpcChain, channel: grpc.Channel, kind: str) -> None:
    reports, hops = call(channel, kind, _meta("someone"))
    found = problems(kind, "base", reports, hops)
    assert not found, "; ".join(found) + f"\n{reports}\n{chain.tail()}"


@pytest.mark.parametrize("kind", ("unary", "bidi"))
def test_forged_tag_and_baggage_from_outside_stay_base(chain: GrpcChain, channel: grpc.Channel, kind: str) -> None:
    forged = _meta("someone", ("x-mse-tag", "gray"), ("baggage", "x-mse-tag=gray,user=eve"))
    reports, hops = call(channel, kind, forged)
    found = problems(kind, "base", reports, hops)
    assert not found, "; ".join(found) + f"\n{reports}\n{chain.tail()}"
    assert all("x-mse-tag=gray" not in b for r in reports for b in r["received"]["baggage"]), reports


def test_an_invalid_lane_in_metadata_is_the_default_lane(chain: GrpcChain, channel: grpc.Channel) -> None:
    # The seed's downgrade: a version value no lane has is served by the default one.
    reports, hops = call(channel, "unary", _meta("someone", ("x-mse-tag", "no such lane!")))
    assert not problems("unary", "base", reports, hops), (reports, hops)


def test_status_details_and_trailing_metadata_reach_the_client_unchanged(chain: GrpcChain,
                                                                         channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(SERVICE + "Fail")(b"", metadata=_meta(GRAY_USER), timeout=CALL_TIMEOUT)
    err: Any = caught.value
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, (err, chain.tail())
    assert err.details() == "precondition failed at c (é)"
    trailing = dict(err.trailing_metadata())
    assert trailing["x-app-detail"] == "c@gray"
    assert trailing["x-app-detail-bin"] == b"\x00\xffbinary"
    rich = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])  # gRPC's rich error model
    info = error_details_pb2.ErrorInfo()
    assert rich.code == grpc.StatusCode.FAILED_PRECONDITION.value[0] and rich.message == err.details()
    assert rich.details[0].Unpack(info) and (info.reason, info.metadata["at"]) == ("NOT_READY", "c")
    # c answered trailers-only (no message), so the one header block, lane metadata included, is the trailers.
    assert _labels(_hops(err.trailing_metadata())) == ["a@gray", "b@base", "c@gray"]


def test_a_client_deadline_ends_as_deadline_exceeded_in_time_and_is_shortened_hop_by_hop(
        chain: GrpcChain, channel: grpc.Channel) -> None:
    slow = channel.unary_unary(SERVICE + "Slow")
    for _ in range(4):  # more than eject_after_failures: a caller's deadline must never eject anyone
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            slow(b"", metadata=_meta(GRAY_USER), timeout=0.5)
        elapsed = time.monotonic() - started
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (caught.value, chain.tail())  # type: ignore[attr-defined]
        assert elapsed < 0.9, f"DEADLINE_EXCEEDED after {elapsed:.2f}s for a 0.5s deadline"
    # c's app saw the deadline each hop shortened (the proxies rewrite grpc-timeout), and stopped waiting.
    lines = _wait_lines(chain.events["c", "gray"], "slow ended", 4)
    deadlines = [float(line.rsplit("deadline=", 1)[1]) for line in lines]
    assert all(0 < d < 0.35 for d in deadlines), lines
    reports, hops = call(channel, "unary", _meta(GRAY_USER))
    assert not problems("unary", "gray", reports, hops), (hops, chain.tail())
    assert all(hop.fallback in (None, "no-instance") for hop in hops), hops


def test_cancelling_a_stream_cancels_it_at_the_end_of_the_chain(chain: GrpcChain, channel: grpc.Channel) -> None:
    # RST_STREAM from the client travels gateway -> a's sidecar -> a -> a's outbound -> b ... -> c.
    events = chain.events["c", "gray"]
    before = _count(events, "cancelled")
    stream = channel.unary_stream(SERVICE + "Ticks")(b"", metadata=_meta(GRAY_USER), timeout=CALL_TIMEOUT)
    ticks = [json.loads(next(stream)) for _ in range(3)]
    assert [t["tick"] for t in ticks] == [0, 1, 2]
    assert ticks[0]["lane"] == "gray" and ticks[0]["service"] == "c"
    stream.cancel()
    deadline = time.monotonic() + 5.0
    while _count(events, "cancelled") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _count(events, "cancelled") == before + 1, f"c never saw the cancel\n{chain.tail()}"


def test_a_strict_lane_with_no_instance_is_unavailable_with_the_reason(chain: GrpcChain,
                                                                       channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(SERVICE + "Unary")(b"", metadata=_meta(VIP_USER), timeout=CALL_TIMEOUT)
    err: Any = caught.value
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err
    assert "vip" in err.details() and err.details().startswith("lane:"), err.details()
    meta = dict(err.trailing_metadata())  # trailers-only: the one header block is the trailers
    assert meta[SERVED_HEADER] == "none"
    assert _labels(_hops(err.trailing_metadata())) == ["a@none"], meta


def test_an_instance_that_does_not_answer_is_deadline_exceeded_with_the_reason(chain: GrpcChain,
                                                                              channel: grpc.Channel) -> None:
    # No client deadline: the proxies' own budget (request_timeout 3 s) ends the call, as a gRPC error.
    chain.pause("app-a-gray", True)
    try:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(SERVICE + "Unary")(b"", metadata=_meta(GRAY_USER), timeout=CALL_TIMEOUT)
        elapsed = time.monotonic() - started
    finally:
        chain.pause("app-a-gray", False)
    err: Any = caught.value
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (err, chain.tail())
    assert err.details().startswith("lane: upstream ") and "timed out" in err.details(), err.details()
    assert 2.0 < elapsed < 4.0, elapsed
    hops = _hops(err.trailing_metadata())
    assert [(h.label(), h.error) for h in hops] == [("a@gray", "504")], hops


def test_fifty_concurrent_mixed_calls_never_cross_lanes(chain: GrpcChain, channel: grpc.Channel) -> None:
    # One client connection, 50 streams in flight at once, gray and base and forged interleaved.
    cases = []
    for i in range(50):
        lane = "base" if i % 3 == 1 else "gray"
        meta = _meta(GRAY_USER if lane == "gray" else "someone", *((("x-mse-tag", "gray"),) if i % 5 == 1 else ()))
        cases.append((KINDS[i % 4], lane, meta))
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda case: call(channel, case[0], case[2]), cases))
    wrong = [f"#{i} {kind} ({lane}): " + "; ".join(found)
             for i, ((kind, lane, _), (reports, hops)) in enumerate(zip(cases, results, strict=True))
             if (found := problems(kind, lane, reports, hops))]
    assert not wrong, f"{len(wrong)} of 50 wrong:\n" + "\n".join(wrong[:10]) + f"\n{chain.tail()}"


def test_http1_still_works_on_the_ports_that_carry_grpc(chain: GrpcChain, channel: grpc.Channel) -> None:
    # a's outbound port carries a's gRPC calls (and did, above); an HTTP/1.1 call through it reaches h.
    call(channel, "unary", _meta(GRAY_USER))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"http://{chain.outbound['a', 'gray']}/", headers={"Host": "h"})
    with opener.open(request, timeout=CALL_TIMEOUT) as resp:
        assert resp.status == 200
        body = json.loads(resp.read())
        assert (body["service"], body["lane"]) == ("h", "base")
        assert _labels(list(parse_path(resp.headers.get_all(PATH_HEADER)))) == ["h@base"]
    # The gateway's port still speaks HTTP/1.1: colored, and answered by the gateway itself (strict lane).
    request = urllib.request.Request(f"http://{chain.gateway}/", headers={"x-user": VIP_USER})
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open(request, timeout=CALL_TIMEOUT)
    assert refused.value.code == 503
    assert refused.value.headers.get("Content-Type", "").startswith("text/plain")
    assert "vip" in refused.value.read().decode()


def test_a_killed_gray_instance_falls_back_with_no_error_for_the_calls_that_follow(
        tmp_path: Path) -> None:
    with grpc_chain(tmp_path) as fresh, grpc.insecure_channel(fresh.gateway) as ch:
        reports, hops = call(ch, "unary", _meta(GRAY_USER))
        assert not problems("unary", "gray", reports, hops), (hops, fresh.tail())
        fresh.kill("app-c-gray")  # c@gray's app dies, its sidecar stays: it answers for it
        fresh.kill("sidecar-a-gray")  # a@gray dies whole: its sidecar's port is closed
        fresh.kill("app-a-gray")
        for i in range(12):
            kind = KINDS[i % 4]
            reports, hops = call(ch, kind, _meta(GRAY_USER))
            assert _labels(hops) == ["a@base", "b@base", "c@base"], (i, hops, fresh.tail())
            assert hops[0].requested == "gray" and hops[2].requested == "gray", hops
            assert all(_apps(r) == ["a@base", "b@base", "c@base"] for r in reports), reports
        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(lambda kind: call(ch, kind, _meta(GRAY_USER)), KINDS * 5))
        assert all(_labels(hops) == ["a@base", "b@base", "c@base"] for _, hops in results)
        # With no instance of a left at all, the gateway's own answer is a gRPC error with the reason.
        fresh.kill("sidecar-a-base")
        with pytest.raises(grpc.RpcError) as caught:
            ch.unary_unary(SERVICE + "Unary")(b"", metadata=_meta(GRAY_USER), timeout=CALL_TIMEOUT)
        err: Any = caught.value
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err
        assert err.details().startswith("lane: upstream ") and "connect failed" in err.details(), err.details()


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def _count(path: Path, line: str) -> int:
    return sum(1 for seen in _lines(path) if seen == line)


def _wait_lines(path: Path, prefix: str, count: int) -> list[str]:
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        found = [line for line in _lines(path) if line.startswith(prefix)]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{path.name}: fewer than {count} lines starting {prefix!r}: {_lines(path)}")
