"""The sidecar's request logic, per request: its inbound side and its outbound side.

Inbound: the lane from the tag or baggage, ``trace id -> lane`` remembered, every trace format handed
to the app, ``x-lane-unavailable`` when the app is down. Outbound: the lane of the inbound request
the call belongs to, live fallback, hop collection, 403 for hosts outside the config. Written against
`lane.engine.exchange` only; nothing here imports aiohttp: a sidecar that never sees a WebSocket or a
``CONNECT`` (both handed to `lane.sidecar.inbound` / `lane.sidecar.outbound` on the same connection)
never loads it.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING

from multidict import CIMultiDict

from lane.core.endpoint import Endpoint
from lane.core.headers import upstream_headers
from lane.core.hops import encode_path
from lane.dataplane import responses
from lane.dataplane.failures import UpstreamFailure
from lane.dataplane.forward import forward
from lane.dataplane.relay import relay, respond_plain
from lane.dataplane.responses import PlainAnswer
from lane.engine.exchange import Exchange, Handler
from lane.engine.head import origin_form
from lane.sidecar.app import app_failure_answer, app_wait
from lane.sidecar.destination import destination, not_a_service
from lane.sidecar.state import Sidecar
from lane.telemetry.metrics import FORBIDDEN, UNKNOWN_SOURCE, in_flight, observe_request

if TYPE_CHECKING:
    from lane.engine.exchange import Sender
    from lane.engine.listen import FastPath

__all__ = ["inbound_path", "outbound_path"]

def inbound_path(sc: Sidecar) -> FastPath:
    gauge = in_flight("inbound")

    def with_pools(upstreams: Sender) -> Handler:
        async def inbound(request: Exchange) -> None:
            started = perf_counter()
            config = sc.runtime.config
            headers = upstream_headers(request)
            sockname = request.sockname
            arrival = sc.arrive(request.headers, headers, str(Endpoint(*sockname)) if sockname else None)
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


def outbound_path(sc: Sidecar) -> FastPath:
    gauge = in_flight("outbound")

    def with_pools(upstreams: Sender) -> Handler:
        async def outbound(request: Exchange) -> None:
            config = sc.runtime.config
            svc, host = destination(config, request.target, request.headers)
            if svc is None:
                FORBIDDEN.inc()
                respond_plain(request, PlainAnswer(403, not_a_service(config, host), CIMultiDict()))
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
