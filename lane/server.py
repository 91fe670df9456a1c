"""The run loop of a lane proxy process: listeners, signals, drain, reload.

* uvloop when installed;
* under ``--workers N`` (see `lane.workers`) data listeners bind with ``SO_REUSEPORT``: N
  processes on one port, the kernel spreads connections over them;
* SIGTERM/SIGINT: stop accepting, let in-flight requests finish up to the drain deadline, exit 0;
  more of them while stopping change nothing (the drain is bounded; SIGKILL still ends it at
  once), so a second Ctrl-C cannot turn a clean stop into a ``KeyboardInterrupt`` halfway;
* no access log unless ``--access-log``: aiohttp's logger formats a line per request, which a
  proxy would pay on every hop; when asked for, data listeners log to ``aiohttp.access`` at INFO
  (shown whatever ``--log-level`` says: asking for it is explicit);
* SIGHUP: reload the config (`Runtime.reload`); a broken file is logged and ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.log import access_logger

from .runtime import Runtime

__all__ = [
    "DEFAULT_DRAIN_SECONDS",
    "HostPort",
    "Listener",
    "add_server_arguments",
    "host_port",
    "run_loop",
    "serve",
]

log = logging.getLogger(__name__)

DEFAULT_DRAIN_SECONDS = 20.0
# Set by the `--workers` supervisor for its workers: only then is a port shared (SO_REUSEPORT), so
# a second proxy started by mistake on a busy port fails loudly instead of silently sharing it.
REUSE_PORT_ENV = "LANE_REUSE_PORT"


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def host_port(text: str) -> HostPort:
    """``HOST:PORT`` (``[v6]:PORT``, or ``:PORT`` for all interfaces) as an argparse type."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return HostPort(host or "0.0.0.0", int(port))


def add_server_arguments(parser: argparse.ArgumentParser, *, workers_help: str | None = None) -> None:
    """Options every proxy command shares: workers, drain deadline, ready file."""
    parser.add_argument("--workers", type=int, default=1,
                        help=workers_help or "processes serving the same port via SO_REUSEPORT (default 1)")
    parser.add_argument("--drain-seconds", type=float, default=DEFAULT_DRAIN_SECONDS,
                        help=f"on SIGTERM, how long in-flight requests may finish (default {DEFAULT_DRAIN_SECONDS:g})")
    parser.add_argument("--ready-file", help="write the bound addresses as JSON to this file once listening")
    parser.add_argument("--access-log", action="store_true",
                        help="log one line per request served (aiohttp.access, INFO); off by default, it costs "
                        "a formatted line per request")


@dataclass(frozen=True, slots=True)
class Listener:
    name: str  # "gateway", "inbound", "outbound", "admin"
    address: HostPort
    app: web.Application
    reuse_port: bool = True  # data listeners share the port between workers; admin does not


async def serve(
    build: Callable[[], Awaitable[tuple[list[Listener], Runtime | None]]],
    *,
    drain_seconds: float = DEFAULT_DRAIN_SECONDS,
    on_ready: Callable[[dict[str, HostPort]], None] | None = None,
    access_log: bool = False,
) -> int:
    """Run the listeners *build* returns until SIGTERM/SIGINT, then drain and return 0.

    *access_log*: data listeners (not the admin one) log each request to ``aiohttp.access``.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if access_log and access_logger.getEffectiveLevel() > logging.INFO:
        access_logger.setLevel(logging.INFO)
    listeners, runtime = await build()
    runners: list[tuple[Listener, web.AppRunner]] = []
    bound: dict[str, HostPort] = {}
    try:
        for listener in listeners:
            logged = access_log and listener.name != "admin"
            runner = web.AppRunner(listener.app, shutdown_timeout=drain_seconds,
                                   access_log=access_logger if logged else None)
            await runner.setup()
            runners.append((listener, runner))
            share = listener.reuse_port and os.environ.get(REUSE_PORT_ENV) == "1"
            site = web.TCPSite(runner, listener.address.host, listener.address.port,
                               reuse_port=share or None, backlog=1024)
            try:
                await site.start()
            except OSError as exc:
                log.error("%s cannot listen on %s: %s", listener.name, listener.address, exc.strerror or exc)
                return 1
            host, port = runner.addresses[0][:2]
            bound[listener.name] = HostPort(host, port)
            log.info("%s listening on http://%s", listener.name, bound[listener.name])
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        if runtime is not None:
            loop.add_signal_handler(signal.SIGHUP, runtime.reload)
        if on_ready is not None:
            on_ready(bound)
        await stop.wait()
        log.info("stopping: no new connections, draining in-flight requests for up to %gs", drain_seconds)
    finally:
        # Ignored from now on, until the loop closes (`run_loop`): the caller's own cleanup after
        # serve() returns (stopping children, flushing spans) is not cut short either.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, _while_stopping, sig)
        # Data listeners first (they drain), the admin listener last so /metrics answers to the end.
        data = [r for li, r in runners if li.name != "admin"]
        await asyncio.gather(*(r.cleanup() for r in data), return_exceptions=True)
        for li, r in runners:
            if li.name == "admin":
                await r.cleanup()
    log.info("stopped")
    return 0


def _while_stopping(sig: int) -> None:
    log.info("%s while stopping: ignored, the drain ends by itself", signal.Signals(sig).name)


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run *main* on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(main)
    return uvloop.run(main)
