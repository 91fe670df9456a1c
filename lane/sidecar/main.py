"""``lane sidecar``: the proxy beside one instance (service S, lane L) of an app.

Two listeners and one shared state (`lane.sidecar.state.Sidecar`):

* inbound (``--listen``, `lane.sidecar.inbound`): what callers reach; forwards to the local app
  (``--app``), remembers ``trace id -> lane``, and answers with its own hop followed by the hops
  of the calls the app made meanwhile (502 with ``x-lane-unavailable`` when the app is down);
* outbound (``--outbound``, `lane.sidecar.outbound`): the app's way out, as an HTTP forward proxy
  or by ``Host: <service>``, to services in the config only; the lane is the request's own tag,
  else the one recovered by trace id, else the default lane, and routing falls back live.

This module is the command: options, checks, the listeners and the run loop (an admin listener
too). With ``--otlp-endpoint`` every inbound and outbound request gets a span (`lane.telemetry.tracing`).

One process only: ``--workers N > 1`` is refused (`WORKERS_REFUSED`). The trace-id cache and the
hop collections are in-process state keyed by the inbound request; with several workers sharing
the ports an app's outbound call could land on a worker that never saw the inbound request.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from lane.core.config import LaneConfig
from lane.core.config_load import load_config_or_demo
from lane.core.endpoint import Endpoint
from lane.core.errors import ConfigError
from lane.core.tags import is_valid_lane
from lane.dataplane.runtime import Runtime
from lane.process.admin import admin_path
from lane.process.admin_access import add_admin_arguments, admin_access
from lane.process.options import add_server_arguments, host_port
from lane.process.readiness import announce
from lane.process.server import Listener, run_loop, serve
from lane.sidecar.handler import inbound_path, outbound_path
from lane.sidecar.state import Sidecar
from lane.telemetry.tracing import add_tracing_arguments, open_tracing, otlp_traces_url

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["WORKERS_REFUSED", "Sidecar", "add_arguments", "run"]

log = logging.getLogger(__name__)

# Why `--workers` must stay 1: sharing the state between processes would need a store every
# worker reaches on every request; a sidecar serves one app instance, so scaling is the app's job.
WORKERS_REFUSED: Final = (
    "lane sidecar runs as one process; --workers {workers} is refused: the trace-id cache (which "
    "recovers the lane when the app forwards only a trace header) and the hop collection (x-lane-path) "
    "live in the process's memory, so an outbound call of the app that lands on another worker would "
    "lose its lane and its hops. To scale, run more app instances, each with its own sidecar"
)


def _inbound_app(sidecar: Sidecar) -> web.Application:
    from lane.sidecar.inbound import build_inbound_app

    return build_inbound_app(sidecar)


def _outbound_app(sidecar: Sidecar) -> web.Application:
    from lane.sidecar.outbound import build_outbound_app

    return build_outbound_app(sidecar)


def _admin_views(sidecar: Sidecar) -> dict[str, Callable[[], object]]:
    """The sidecar's own admin views: ``/lane/carriers``, what its app forwards of the lane (`lane.sidecar.carriers`)."""
    return {"/lane/carriers": lambda: sidecar.carriers.view()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=os.environ.get("LANE_CONFIG"),
                        help="lane config YAML (default: $LANE_CONFIG; required unless --demo)")
    parser.add_argument("--demo", action="store_true",
                        help="without --config: serve the embedded demo config (never a silent default)")
    parser.add_argument("--service", default=os.environ.get("LANE_SERVICE"),
                        help="the service this instance belongs to (default: $LANE_SERVICE)")
    parser.add_argument("--lane", default=os.environ.get("LANE_LANE"),
                        help="the lane of this instance (default: $LANE_LANE)")
    parser.add_argument("--app", type=host_port, default=os.environ.get("LANE_APP"),
                        help="HOST:PORT of the local app (default: $LANE_APP)")
    parser.add_argument("--listen", type=host_port, default=host_port("127.0.0.1:15006"),
                        help="inbound HOST:PORT, what callers reach (default 127.0.0.1:15006)")
    parser.add_argument("--outbound", type=host_port, default=host_port("127.0.0.1:15001"),
                        help="outbound HOST:PORT, the app's HTTP_PROXY (default 127.0.0.1:15001)")
    parser.add_argument("--admin", type=host_port, default=host_port("127.0.0.1:15000"),
                        help="admin HOST:PORT (default 127.0.0.1:15000)")
    add_admin_arguments(parser)
    add_tracing_arguments(parser)
    add_server_arguments(parser, workers_help="must be 1: a sidecar keeps per-request state in one process "
                         "(trace-id cache, hop collection); scale the app instead")


def _check(args: argparse.Namespace, config: LaneConfig) -> str | None:
    if args.workers != 1:
        return WORKERS_REFUSED.format(workers=args.workers)
    if not args.service:
        return "--service is required (or set LANE_SERVICE)"
    if args.service not in config.services:
        return f"--service {args.service!r} is not a service in {config.source}: {', '.join(sorted(config.services))}"
    if not args.lane or not is_valid_lane(args.lane):
        return f"--lane must be a DNS label (or set LANE_LANE), got {args.lane!r}"
    if args.app is None:
        return "--app HOST:PORT is required (or set LANE_APP)"
    return _check_instances(args, config)


def _check_instances(args: argparse.Namespace, config: LaneConfig) -> str | None:
    """The two silent misconfigurations: the app's port listed as an instance, a lane the service lacks.

    An instance address is what callers reach, so it must be a sidecar's inbound address: with the
    app's own port listed, everything answers, but calls bypass the sidecar and the lane is lost
    after one hop. Found at start-up instead of in a gray release.
    """
    app = Endpoint(args.app.host, args.app.port)
    for svc in config.services.values():
        for lane, endpoints in svc.instances.items():
            if app in endpoints:
                return (f"--app {app} is listed in {config.source} as an instance of {svc.name}@{lane}, but instance "
                        f"addresses must be the sidecars' inbound addresses (what callers reach): write this "
                        f"sidecar's --listen {args.listen} under services.{svc.name}.instances.{lane} instead; "
                        f"with the app's own port there, calls bypass the sidecar and lose their lane after one hop")
    svc = config.services[args.service]
    if svc.instances and args.lane not in svc.instances:
        return (f"--lane {args.lane}: service {svc.name} has no {args.lane} instance in {config.source} (its lanes: "
                f"{', '.join(svc.instances)}); add this sidecar's --listen {args.listen} under "
                f"services.{svc.name}.instances.{args.lane}")
    return None


def run(args: argparse.Namespace) -> int:
    if isinstance(args.app, str):
        args.app = host_port(args.app)
    try:
        config = load_config_or_demo(args.config, demo=args.demo, command="lane sidecar")
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    problem = _check(args, config)
    if problem:
        log.error("%s", problem)
        return 2

    return run_loop(_main(args, config))


async def _main(args: argparse.Namespace, config: LaneConfig) -> int:
    # Tracing outlives the listeners: serve() returns after the drain, then the last spans are flushed.
    instance = {"lane.sidecar.service": args.service, "lane.sidecar.lane": args.lane}
    async with open_tracing(otlp_traces_url(args.otlp_endpoint), "lane-sidecar", instance) as tracing:

        async def build() -> tuple[list[Listener], Runtime]:
            runtime = Runtime(config, args.config)
            sidecar = Sidecar.create(runtime, args.service, args.lane, Endpoint(args.app.host, args.app.port),
                                     tracing)
            access = admin_access(args)
            # The one core serves every listener; the aiohttp apps are built (and aiohttp loaded)
            # only for what it hands them: WebSocket upgrades and CONNECT.
            return [
                Listener("inbound", args.listen, lambda: _inbound_app(sidecar), fast=inbound_path(sidecar)),
                Listener("outbound", args.outbound, lambda: _outbound_app(sidecar), fast=outbound_path(sidecar)),
                Listener("admin", args.admin, None, reuse_port=False,
                         fast=admin_path(runtime, _admin_views(sidecar), access)),
            ], runtime

        def ready(bound: dict[str, Endpoint]) -> None:
            announce("sidecar", bound, args.ready_file)

        return await serve(build, drain_seconds=args.drain_seconds, on_ready=ready, access_log=args.access_log)
