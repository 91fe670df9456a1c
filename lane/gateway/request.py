"""The gateway's request logic, written once for every codec: trust, coloring, trace headers.

For every request: a lane tag an outside client sent (the tag header, the lane member of
``baggage``) is removed unless the peer is in ``proxy.trusted_cidrs`` -- other baggage members
survive; the request is colored by the rules (first match wins, else the default lane; a trusted
peer's valid tag wins over the rules); it gets a ``traceparent`` when it has none and an
``x-request-id`` of the gateway's own unless the peer is trusted and sent one (so sidecars can always
recover the lane by trace id, and a client cannot choose the id another request is recovered by:
its id travels on as ``x-client-request-id``, like Envoy's ``preserve_external_request_id: false``);
a trace header an untrusted client sent twice is replaced. The codec (`lane.gateway.handler` for
HTTP/1.1) only turns bytes into a request and the answer back into bytes.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Final

from multidict import CIMultiDict, MultiMapping

from lane.core.config import LaneConfig
from lane.core.deadline import DEADLINE_HEADER
from lane.core.headers import ForwardedFrom, upstream_headers
from lane.core.rules import Coloring, RequestView, color
from lane.core.wire import has_lane_tag, request_lane, set_lane, strip_lane
from lane.dataplane.trace_identity import TraceIdentity, new_request_id
from lane.telemetry.metrics import REJECTED_TAGS

__all__ = [
    "CLIENT_REQUEST_ID",
    "colored_headers",
    "distrust_request_id",
    "drop_repeated_trace_headers",
    "ensure_trace_headers",
    "is_trusted",
    "lane_of",
]

log = logging.getLogger(__name__)

CLIENT_REQUEST_ID: Final = "x-client-request-id"
_B3_RELATED: Final = ("x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3")


def is_trusted(config: LaneConfig, peer: str | None) -> bool:
    """Whether *peer* (an IP address) is inside one of the trusted CIDRs.

    A dual-stack listener reports IPv4 clients as IPv4-mapped IPv6 (``::ffff:10.1.2.3``); they are
    compared as the IPv4 address they are, so IPv4 CIDRs match them.
    """
    if not peer or not config.proxy.trusted_cidrs:
        return False
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in config.proxy.trusted_cidrs)


def distrust_request_id(headers: CIMultiDict[str]) -> None:
    """Move an untrusted client's ``x-request-id`` to ``x-client-request-id`` (the gateway mints its own).

    Sidecars recover a request's lane and hop record by this id, so it must be unique per request:
    a client that sent the same id with many requests would otherwise mix their lanes up.
    """
    sent = headers.popall("x-request-id", None)
    if sent is not None:
        headers[CLIENT_REQUEST_ID] = sent[0]


def drop_repeated_trace_headers(headers: CIMultiDict[str], names: tuple[str, ...]) -> None:
    """Remove every trace header an untrusted client sent more than once (the gateway then mints its own).

    Sidecars recover lanes by trace id, and which of two values an app keeps is the app's choice: a
    client that appended the trace id of another request it saw could otherwise pull its own calls
    into that request's lane. Exactly one value of each trace header leaves the gateway.
    """
    for name in (*names, *_B3_RELATED):
        values = headers.getall(name, None)
        if values is not None and len(values) > 1:
            headers.popall(name)


def ensure_trace_headers(headers: CIMultiDict[str]) -> None:
    """Give the request a ``traceparent`` and an ``x-request-id`` (a version 4 UUID) when it has none.

    The ids only have to be unique, not secret: like OpenTelemetry's `RandomIdGenerator` they come
    from `random.getrandbits`, which costs a fraction of `secrets`/`uuid4` (a system call each).
    """
    if "traceparent" not in headers:
        identity = TraceIdentity.new()
        headers["traceparent"] = f"00-{identity.trace_hex}-{identity.span_hex}-01"
    if "x-request-id" not in headers:
        headers["x-request-id"] = new_request_id()


def lane_of(config: LaneConfig, headers: CIMultiDict[str], received: MultiMapping[str], raw_query: str,
            trusted: bool, peer: str | None) -> Coloring:
    """The request's lane, and the rule that chose it (None: a trusted tag or the default lane).

    *headers* are the ones leaving (the lane tag is stripped from them); *received* and *raw_query*
    are what the client sent, which the rules look at.
    """
    lane = None
    if trusted:
        lane = request_lane(headers, config.tag)
    elif has_lane_tag(headers, config.tag):
        source = "header" if config.tag.header in headers else "baggage"
        REJECTED_TAGS.labels(source=source).inc()
        log.debug("removed a lane tag sent by untrusted peer %s", peer)
    strip_lane(headers, config.tag)
    if lane is not None:
        return Coloring(lane, None)
    if not config.rules:
        return Coloring(config.default_lane, None)  # nothing to match: skip building the request view
    return color(config.rules, RequestView.of_request(received, raw_query), config.default_lane)


def colored_headers(config: LaneConfig, request: ForwardedFrom, raw_query: str) -> tuple[CIMultiDict[str], Coloring]:
    """The headers to send upstream and the request's coloring, as the gateway starts every request
    (plain or WebSocket).

    Only a trusted peer keeps its X-Forwarded-*, lane tag and x-request-id; the request leaves with its
    lane in the tag header and as the first baggage member.
    """
    trusted = is_trusted(config, request.remote)
    headers = upstream_headers(request, trust_forwarded=trusted)
    coloring = lane_of(config, headers, request.headers, raw_query, trusted, request.remote)
    if not trusted:
        distrust_request_id(headers)
        drop_repeated_trace_headers(headers, config.proxy.trace_headers)
        headers.popall(DEADLINE_HEADER, None)  # a client must not shorten the wait and get instances blamed
    set_lane(headers, config.tag, coloring.lane)
    return headers, coloring
