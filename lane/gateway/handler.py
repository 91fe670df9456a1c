"""``lane gateway`` on the fast core: the same coloring and forwarding as `lane.gateway.main`, per request.

Everything a request goes through is the aiohttp core's own code (trust, header rewriting,
coloring, trace headers, `lane.dataplane.dispatch`, the answer's hop record); only parsing, sending and
relaying are the fast core's (`lane.engine`). WebSocket upgrades reach `lane.gateway.main`'s aiohttp
handler on the same connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lane.dataplane.explain import relay_explained
from lane.dataplane.forward import forward
from lane.dataplane.relay import relay, respond_plain
from lane.dataplane.responses import PlainAnswer, answer_headers
from lane.dataplane.runtime import Runtime
from lane.engine.listen import FastPath
from lane.engine.server import Handler, Request
from lane.gateway.request import colored_headers, ensure_trace_headers
from lane.telemetry.metrics import in_flight
from lane.telemetry.tracing import Tracing

if TYPE_CHECKING:
    from lane.engine.upstream import Upstreams

__all__ = ["gateway_path"]


def gateway_path(runtime: Runtime, tracing: Tracing, *, explain: bool = False) -> FastPath:
    """The gateway's handler; with *explain*, small JSON answers carry their hop record (`lane.dataplane.explain`)."""
    gauge = in_flight("gateway")
    send_on = relay_explained if explain else relay

    def with_pools(upstreams: Upstreams) -> Handler:
        async def handle(request: Request) -> None:
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
