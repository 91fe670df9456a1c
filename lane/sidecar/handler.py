"""``lane sidecar`` on the fast core: its inbound and outbound sides, per request.

The same steps as the aiohttp core's `lane.sidecar.inbound` / `lane.sidecar.outbound` (lane from
the tag or baggage, ``trace id -> lane`` remembered, hop collection, ``x-lane-unavailable`` when
the app is down, 403 for hosts outside the config), with parsing, sending and relaying by
`lane.engine`. Nothing here imports aiohttp: a sidecar that never sees a WebSocket or a ``CONNECT``
(both handed to the aiohttp apps on the same connection) never loads it.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING

from multidict import CIMultiDict

from lane.core.headers import upstream_headers
from lane.core.hops import encode_path
from lane.dataplane import responses
from lane.dataplane.failures import UpstreamFailure
from lane.dataplane.forward import forward
from lane.dataplane.relay import relay, respond_plain
from lane.dataplane.responses import PlainAnswer
from lane.engine.server import Handler, Request, origin_form
from lane.process.server import HostPort
from lane.sidecar.app import app_failure_answer, app_wait
from lane.sidecar.state import Sidecar
from lane.telemetry.metrics import FORBIDDEN, UNKNOWN_SOURCE, in_flight, observe_request

if TYPE_CHECKING:
    from lane.engine.listen import FastPath
    from lane.engine.upstream import Upstreams

__all__ = ["inbound_path", "outbound_path", "target_authority"]

def inbound_path(sc: Sidecar) -> FastPath:
    gauge = in_flight("inbound")

    def with_pools(upstreams: Upstreams) -> Handler:
        async def inbound(request: Request) -> None:
            started = perf_counter()
            config = sc.runtime.config
            headers = upstream_headers(request)
            sockname = request.sockname
            arrival = sc.arrive(request.headers, headers, str(HostPort(*sockname)) if sockname else None)
            requested, reason, own = arrival.requested, arrival.reason, arrival.own
            gauge.inc()
            try:
                with sc.tracing.span("inbound", sc.service, request.method, request.path, headers,
                                     requested=requested) as span:
                    span.inject(headers)
                    span.routed(sc.lane, reason, own.instance)
                    with sc.collecting(arrival, headers) as collection:
                        collection.trace_context = span.context
                        try:
                            upstream = await upstreams.send(request.method, sc.app, origin_form(request.target),
                                                            headers, request.body, config.proxy,
                                                            app_wait(arrival.wait, sc.app))
                        except UpstreamFailure as exc:
                            observe_request(config, "inbound", sc.service, requested, sc.lane, reason, exc.status,
                                            started=started, source=UNKNOWN_SOURCE)
                            span.answered(exc.status, type(exc).__name__)
                            respond_plain(request, app_failure_answer(sc.service, sc.lane, own, exc, collection))
                            return
                        path = encode_path([own, *collection.hops()])
                    observe_request(config, "inbound", sc.service, requested, sc.lane, reason, upstream.status,
                                    started=started, source=UNKNOWN_SOURCE)
                    span.answered(upstream.status)
                    await relay(request, upstream, responses.own_headers(upstream.headers, path, own))
            finally:
                gauge.dec()

        return inbound

    return with_pools


def target_authority(request: Request) -> str | None:
    """The host an outbound request is for: the absolute-form target's authority, else the Host header."""
    target = request.target
    if not target.startswith("/") and target != "*":
        start = target.find("://")
        if start >= 0:
            rest = target[start + 3:]
            end = len(rest)
            for stop in "/?#":
                at = rest.find(stop)
                if 0 <= at < end:
                    end = at
            authority = rest[:end].rpartition("@")[2]  # never a userinfo part
            if authority:
                return authority.lower()
    return request.headers.get("Host")


def outbound_path(sc: Sidecar) -> FastPath:
    gauge = in_flight("outbound")

    def with_pools(upstreams: Upstreams) -> Handler:
        async def outbound(request: Request) -> None:
            config = sc.runtime.config
            host = target_authority(request)
            svc = config.service_by_host(host) if host else None
            if svc is None:
                FORBIDDEN.inc()
                shown = repr(host[:100]) if host else "(no host)"
                respond_plain(request, PlainAnswer(
                    403, f"lane sidecar: {shown} is not a service in the lane config {config.source}; "
                    f"the sidecar only forwards to: {', '.join(sorted(config.services))}", CIMultiDict()))
                return
            headers = upstream_headers(request)
            departure = sc.depart(headers)
            lane, collection = departure.lane, departure.collection
            slot = collection.reserve() if collection is not None else -1
            gauge.inc()
            try:
                with sc.tracing.span("outbound", svc.name, request.method, request.path, headers, requested=lane,
                                     kind="client",
                                     parent=collection.trace_context if collection else None) as span:
                    span.inject(headers)
                    sent = await forward(request, upstreams, sc.runtime.registry, config, proxy="outbound",
                                         service=svc.name, lane=lane, headers=headers, span=span,
                                         source=(sc.service, sc.lane))
                    if isinstance(sent, PlainAnswer):
                        hops = departure.answered(sent.headers)
                        if collection is not None:  # the failed call stays in the record
                            collection.fill(slot, hops)
                        respond_plain(request, sent)
                        return
                    out = responses.answer_headers(sent.response.headers, sent.hop)
                    hops = departure.answered(out)
                    if collection is not None:
                        collection.fill(slot, hops)
                    await relay(request, sent.response, out)
            finally:
                gauge.dec()

        return outbound

    return with_pools
