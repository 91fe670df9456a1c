"""One side of the ``engine-hop`` subject: lane's engine with next to no request logic.

The sidecar hop pair (``sidecar-hop``) costs lane's engine (llhttp parsing, keep-alive pools, the
relay, the event loop, the socket writes) plus lane's request logic (the lane from tag or baggage or
trace ids, every trace format completed, the trace cache, the hop record, metrics, deadlines). This
process runs the same engine (`lane.engine.listen.listen_http`, `lane.dataplane.relay`) with the least a
proxy must do: the outbound side picks the instance by the tag header as received, the inbound side
forwards to its app; hop-by-hop headers are stripped and ``X-Forwarded-*`` added, nothing else. The
pair of these against the Envoy pair in the same run is what the engine costs; the difference to
``sidecar-hop`` is what lane's logic costs.

    python bench/engine_hop.py --listen 127.0.0.1:0 --to 127.0.0.1:8080 [--route gray=HOST:PORT ...]
                               [--ready-file PATH]

With ``--route LANE=HOST:PORT`` a request goes where its ``x-mse-tag`` says (``--to`` when the tag
is missing or unknown). Not a product: a measuring instrument, started and stopped by `bench/subjects.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import uvloop

from lane.core.endpoint import Endpoint, parse_endpoint
from lane.core.headers import strip_hop_by_hop, upstream_headers
from lane.core.tags import DEFAULT_TAG_HEADER
from lane.dataplane.relay import relay
from lane.engine.exchange import Exchange, Handler, Sender
from lane.engine.head import origin_form
from lane.engine.listen import FastPath, listen_http
from lane.process.collector import settle
from lane.process.readiness import announce

_TIMEOUTS = argparse.Namespace(connect_timeout=2.0, request_timeout=30.0)


def forwarder(default: Endpoint, routes: dict[str, Endpoint]) -> FastPath:
    """The handler: the instance the tag header names (else *default*), the answer relayed as it came."""

    def with_pools(upstreams: Sender) -> Handler:
        async def handle(request: Exchange) -> None:
            target = routes.get(request.headers.get(DEFAULT_TAG_HEADER, ""), default) if routes else default
            answer = await upstreams.send(request.method, target, origin_form(request.target),
                                          upstream_headers(request), request.body, _TIMEOUTS, 30.0)
            await relay(request, answer, strip_hop_by_hop(answer.headers))

        return handle

    return with_pools


async def _serve(listen: Endpoint, to: Endpoint, routes: dict[str, Endpoint], ready_file: str | None) -> None:
    listener = await listen_http(forwarder(to, routes), listen.host, listen.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    settle()  # as a lane proxy does once ready (`lane.process.collector`)
    announce("engine-hop", {"hop": Endpoint(*listener.address)}, ready_file)
    await stop.wait()
    await listener.close(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT to listen on (port 0: any)")
    parser.add_argument("--to", required=True, help="HOST:PORT requests go to (without a matching --route)")
    parser.add_argument("--route", action="append", default=[], help="LANE=HOST:PORT: where that tag goes")
    parser.add_argument("--ready-file", help="write the bound address as JSON here once listening")
    args = parser.parse_args(argv)
    try:
        listen = parse_endpoint(args.listen, any_host="127.0.0.1")
        to = parse_endpoint(args.to)
        routes = {}
        for route in args.route:
            lane, eq, address = route.partition("=")
            if not eq or not lane:
                raise ValueError(f"--route wants LANE=HOST:PORT, got {route!r}")
            routes[lane] = parse_endpoint(address)
    except ValueError as exc:
        parser.error(str(exc))
    uvloop.run(_serve(listen, to, routes, args.ready_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
