"""The run loop of a lane proxy process: listeners, signals, drain, reload.

* uvloop when installed;
* under ``--workers N`` (see `lane.process.workers`) data listeners bind with ``SO_REUSEPORT``: N
  processes on one port, the kernel spreads connections over them;
* SIGTERM/SIGINT: stop accepting, let in-flight requests finish up to the drain deadline, exit 0;
  more of them while stopping change nothing (the drain is bounded; SIGKILL still ends it at
  once), so a second Ctrl-C cannot turn a clean stop into a ``KeyboardInterrupt`` halfway;
* one forwarding core (`lane.engine`) serves every listener that has a handler for it; an upgrade
  (WebSocket, CONNECT) is handed to the listener's aiohttp app on the same connection, and a
  listener that is only an aiohttp app (the demo's own pages) is served by aiohttp;
* no access log unless ``--access-log`` (`lane.telemetry.access_log`): a formatted line per request is a cost
  every hop would pay;
* once every listener is up, the cyclic garbage collector is settled (`lane.process.collector`);
* SIGHUP: reload the config (`Runtime.reload`); a broken file is logged and ignored;
* data listeners of a proxy (not admin) get the overload limits of the config's
  ``proxy:`` (`lane.process.overload`), re-tuned when the config is reloaded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from lane.core.endpoint import Endpoint
from lane.dataplane.runtime import Runtime
from lane.process import collector
from lane.process.options import DEFAULT_DRAIN_SECONDS

if TYPE_CHECKING:
    from aiohttp import web

    from lane.core.config import ProxySpec
    from lane.engine.limits import Limits
    from lane.engine.listen import FastPath

__all__ = [
    "Listener",
    "Started",
    "run_loop",
    "serve",
    "start_listener",
]

log = logging.getLogger(__name__)

# Set by the `--workers` supervisor for its workers: only then is a port shared (SO_REUSEPORT), so
# a second proxy started by mistake on a busy port fails loudly instead of silently sharing it.
REUSE_PORT_ENV = "LANE_REUSE_PORT"


@dataclass(frozen=True, slots=True)
class Listener:
    name: str  # "gateway", "inbound", "outbound", "admin"
    address: Endpoint
    # The aiohttp app upgrades are handed to; a callable builds it only at the first upgrade. None: the
    # listener serves no upgrade and no CONNECT (501), e.g. the admin port.
    app: web.Application | Callable[[], web.Application] | None
    reuse_port: bool = True  # data listeners share the port between workers; admin does not
    fast: FastPath | None = None  # the fast-core handler; else the app's `FAST_PATH`, if it has one


class Started:
    """A listener that is accepting; `close` drains it, `retune` changes its overload limits (fast core only)."""

    def __init__(self, address: Endpoint, close: Callable[[float], Awaitable[None]],
                 retune: Callable[[Limits], None] | None = None) -> None:
        self.address = address
        self._close = close
        self.retune = retune

    async def close(self, drain_seconds: float) -> None:
        await self._close(drain_seconds)


def _fast_path(listener: Listener) -> FastPath | None:
    if listener.fast is not None:
        return listener.fast
    app = listener.app
    if app is None or (callable(app) and not _is_app(app)):
        return None
    from lane.dataplane.upgrades import FAST_PATH

    return cast("web.Application", app).get(FAST_PATH)


def _is_app(app: object) -> bool:
    from aiohttp import web

    return isinstance(app, web.Application)


def _app_of(listener: Listener) -> web.Application:
    app = listener.app
    assert app is not None
    return app if _is_app(app) else app()  # type: ignore[return-value]


async def start_listener(listener: Listener, *, drain_seconds: float = DEFAULT_DRAIN_SECONDS,
                         access_log: bool = False, reuse_port: bool | None = None,
                         limits: Limits | None = None) -> Started:
    """Bind *listener* and start serving; `OSError` when the address is taken.

    A listener with a one-core handler serves its requests with it (within *limits*) and builds the
    aiohttp app only for the first upgrade; a listener that is only an aiohttp app is served by aiohttp.
    """
    fast = _fast_path(listener)
    if fast is not None:
        from lane.engine.listen import AiohttpFallback, listen_http

        if access_log:
            from lane.telemetry.access_log import logged

            fast = logged(fast, listener.name)

        fallback = None if listener.app is None else AiohttpFallback(
            lambda: _app_of(listener), shutdown_timeout=drain_seconds, access_log=None)
        running = await listen_http(fast, listener.address.host, listener.address.port, fallback=fallback,
                                  reuse_port=reuse_port, limits=limits)

        async def close_fast(drain: float) -> None:
            await running.close(drain)
            if fallback is not None:
                await fallback.cleanup()

        host, port = running.address
        return Started(Endpoint(host, port), close_fast, running.protocol.set_limits)

    from aiohttp import web
    from aiohttp.log import access_logger

    runner = web.AppRunner(_app_of(listener), shutdown_timeout=drain_seconds,
                           access_log=access_logger if access_log else None)
    await runner.setup()
    site = web.TCPSite(runner, listener.address.host, listener.address.port, reuse_port=reuse_port, backlog=1024)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    host, port = runner.addresses[0][:2]

    async def close_runner(drain: float) -> None:
        await runner.cleanup()

    return Started(Endpoint(host, port), close_runner)


async def serve(
    build: Callable[[], Awaitable[tuple[list[Listener], Runtime | None]]],
    *,
    drain_seconds: float = DEFAULT_DRAIN_SECONDS,
    on_ready: Callable[[dict[str, Endpoint]], None] | None = None,
    access_log: bool = False,
) -> int:
    """Run the listeners *build* returns until SIGTERM/SIGINT, then drain and return 0.

    *access_log*: data listeners (not the admin one) log each request (`lane.telemetry.access_log`).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if access_log:
        from lane.telemetry.access_log import enable

        enable()
    listeners, runtime = await build()
    started: list[tuple[Listener, Started]] = []
    bound: dict[str, Endpoint] = {}
    try:
        for listener in listeners:
            logged = access_log and listener.name != "admin"
            share = listener.reuse_port and os.environ.get(REUSE_PORT_ENV) == "1"
            limits = _limits_of(listener.name, runtime.config.proxy) if runtime is not None else None
            try:
                running = await start_listener(listener, drain_seconds=drain_seconds, access_log=logged,
                                               reuse_port=share or None, limits=limits)
            except OSError as exc:
                log.error("%s cannot listen on %s: %s", listener.name, listener.address, exc.strerror or exc)
                return 2  # the command could not run, like any other refused input
            started.append((listener, running))
            bound[listener.name] = running.address
            log.info("%s listening on http://%s", listener.name, bound[listener.name])
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        if runtime is not None:
            loop.add_signal_handler(signal.SIGHUP, runtime.reload)
            runtime.on_swap(lambda config: _retune(started, config.proxy))
        collector.settle()
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
        data = [r for li, r in started if li.name != "admin"]
        await asyncio.gather(*(r.close(drain_seconds) for r in data), return_exceptions=True)
        for li, r in started:
            if li.name == "admin":
                await r.close(drain_seconds)
    log.info("stopped")
    return 0


def _limits_of(name: str, spec: ProxySpec) -> Limits | None:
    """A proxy's data listeners get the overload limits of its config; its admin listener gets none."""
    if name == "admin":
        return None
    from lane.process.overload import listener_limits

    return listener_limits(spec, name)


def _retune(started: list[tuple[Listener, Started]], spec: ProxySpec) -> None:
    for listener, running in started:
        limits = _limits_of(listener.name, spec)
        if limits is not None and running.retune is not None:
            running.retune(limits)


def _while_stopping(sig: int) -> None:
    log.info("%s while stopping: ignored, the drain ends by itself", signal.Signals(sig).name)


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run *main* on uvloop when it is installed, else on asyncio's default loop.

    Metric updates still pending when the loop ends are handed to prometheus-client then: with
    ``--workers`` its files outlive the process and the supervisor still reads them.
    """
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            return asyncio.run(main)
        return uvloop.run(main)
    finally:
        tally = sys.modules.get("lane.telemetry.metric_tally")
        if tally is not None:
            tally.flush()
