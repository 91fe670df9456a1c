"""The gateway's request logic, per request: color, forward down the lane, relay the answer.

Trust and header rewriting and coloring are `lane.gateway.request`; forwarding with live fallback is
`lane.dataplane.forward`; the answer goes back through `lane.dataplane.relay`. It reads and answers
an `lane.engine.exchange.Exchange` and sends through a `Sender`, so it never sees the codec that
parsed the bytes. WebSocket upgrades reach `lane.gateway.main`'s aiohttp app on the same connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lane.dataplane.explain import relay_explained
from lane.dataplane.forward import forward
from lane.dataplane.relay import relay, respond_plain
from lane.dataplane.responses import PlainAnswer, answer_headers
from lane.dataplane.runtime import Runtime
from lane.engine.exchange import Exchange, Handler
from lane.engine.listen import FastPath
from lane.gateway.request import colored_headers, ensure_trace_headers
from lane.telemetry.metrics import in_flight
from lane.telemetry.tracing import Tracing

if TYPE_CHECKING:
    from lane.engine.exchange import Sender

__all__ = ["gateway_path"]


def gateway_path(runtime: Runtime, tracing: Tracing, *, explain: bool = False) -> FastPath:
    """The gateway's handler; with *explain*, small JSON answers carry their hop record (`lane.dataplane.explain`)."""
    gauge = in_flight("gateway")
    send_on = relay_explained if explain else relay

    def with_pools(upstreams: Sender) -> Handler:
        async def handle(request: Exchange) -> None:
            config = runtime.config  # this request's snapshot, even if a reload happens meanwhile
            headers, coloring = colored_headers(config, request, request.query_string)
            lane = coloring.lane
            service = config.entry
            with tracing.span("gateway", service, request.method, request.path, headers, requested=lane,
                              rule=coloring.rule) as span:
                span.inject(headers)  # before ensure_trace_headers: a traced request continues this span
                ensure_trace_headers(headers)
                gauge.inc()
                try:
                    sent = await forward(request, upstreams, runtime.registry, config, proxy="gateway",
                                         service=service, lane=lane, headers=headers, span=span)
                    if isinstance(sent, PlainAnswer):
                        respond_plain(request, sent)
                        return
                    await send_on(request, sent.response, answer_headers(sent.response.headers, sent.hop))
                finally:
                    gauge.dec()

        return handle

    return with_pools
