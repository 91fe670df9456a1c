"""``lane gateway`` on the fast core: the same coloring and forwarding as `lane.gateway`, per request.

Everything a request goes through is the aiohttp core's own code (trust, header rewriting,
coloring, trace headers, `lane.dispatch`, the answer's hop record); only parsing, sending and
relaying are the fast core's (`lane.h1`). WebSocket upgrades reach `lane.gateway`'s aiohttp
handler on the same connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .explain import relay_explained
from .gateway_request import colored_headers, ensure_trace_headers
from .h1.forward import forward
from .h1.listen import FastPath
from .h1.relay import relay, respond_plain
from .h1.server import Handler, Request
from .metrics import in_flight
from .responses import PlainAnswer, answer_headers
from .runtime import Runtime
from .tracing import Tracing

if TYPE_CHECKING:
    from .h1.upstream import Upstreams

__all__ = ["gateway_path"]


def gateway_path(runtime: Runtime, tracing: Tracing, *, explain: bool = False) -> FastPath:
    """The gateway's handler; with *explain*, small JSON answers carry their hop record (`lane.explain`)."""
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
