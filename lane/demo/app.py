"""``lane demo-app``: a tiny JSON service for the demo, the images and the tests.

``GET /`` calls ``http://<svc>/`` for each name in ``--calls``, in order, through
``HTTP_PROXY`` (its sidecar's outbound port; aiohttp with ``trust_env=True``), and answers
``{"service", "lane", "instance", "calls": [downstream answers]}``; 502 when a call failed, so a
broken path is visible in the status. Like Istio's sample apps it forwards the usual tracing and
lane headers to its calls; ``--forward-only x-request-id`` makes it forward nothing but the named
headers (the demo's ``d``), which is what trace-id recovery in the sidecar is for.

Also: ``POST /echo`` streams the request body back; ``GET /ws`` is a WebSocket echo;
``GET /healthz``.

``--grpc`` also serves ``/lane.demo.Demo/Call`` on the same port, the same call graph over gRPC
(`lane.demo.grpc_app`; needs grpcio, ``pip install 'lane[grpc]'``).

``--fault error=0.2,latency=200ms`` makes ``GET /`` misbehave, for showing a rollback (`lane demo
--fault c@gray:...`, `lane rollout`): each answer is delayed by the latency, and the given fraction
of them is a 500 of the app's own (before it calls anyone). Health checks stay healthy: the fault is
the kind a bad release has, not a dead instance.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from aiohttp import web

from lane.core.endpoint import Endpoint
from lane.core.errors import LaneError
from lane.process.options import add_server_arguments, host_port
from lane.process.readiness import announce
from lane.process.server import Listener, run_loop, serve

__all__ = ["DEFAULT_FORWARD", "DemoApp", "Fault", "add_arguments", "build_demo_app", "fault", "run"]

log = logging.getLogger(__name__)

# What a well-behaved app forwards (Istio's samples forward the tracing ones; OTel apps baggage).
DEFAULT_FORWARD: Final = (
    "x-mse-tag", "baggage", "traceparent", "tracestate", "x-request-id", "x-b3-traceid", "x-b3-spanid",
    "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3", "uber-trace-id", "sw8",
)


@dataclass(frozen=True, slots=True)
class Fault:
    """How a faulty demo app misbehaves on ``GET /``: a fraction of 500s and an added delay."""

    error_rate: float = 0.0  # 0..1
    latency: float = 0.0  # seconds

    def __str__(self) -> str:
        return f"error={self.error_rate:g},latency={self.latency * 1000:g}ms"


def fault(text: str) -> Fault:
    """``error=0.2``, ``latency=200ms`` (or ``0.2s``), or both comma-separated; argparse's ``type``."""
    error, latency = 0.0, 0.0
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, eq, value = part.partition("=")
        try:
            if name == "error" and eq:
                error = float(value)
                if not 0.0 <= error <= 1.0:
                    raise ValueError
            elif name == "latency" and eq:
                value = value.strip()
                latency = float(value[:-2]) / 1000 if value.endswith("ms") else float(value.removesuffix("s"))
                if not 0.0 <= latency <= 60.0:
                    raise ValueError
            else:
                raise ValueError
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected error=FRACTION (0 to 1) and/or latency=DURATION (e.g. 200ms, up to 60s), got {part!r}"
            ) from None
    if not text.strip():
        raise argparse.ArgumentTypeError("expected error=FRACTION and/or latency=DURATION, got nothing")
    return Fault(error, latency)


@dataclass(frozen=True, slots=True)
class DemoApp:
    service: str
    lane: str
    calls: tuple[str, ...]
    forward: tuple[str, ...]
    call_timeout: float = 10.0
    fault: Fault = Fault()


APP: Final = web.AppKey("lane_demo_app", DemoApp)
SESSION: Final = web.AppKey("lane_demo_session", aiohttp.ClientSession)


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    app[SESSION] = aiohttp.ClientSession(trust_env=True, timeout=aiohttp.ClientTimeout(total=app[APP].call_timeout))
    try:
        yield
    finally:
        await app[SESSION].close()


async def _call(session: aiohttp.ClientSession, name: str, headers: dict[str, str]) -> dict[str, Any]:
    try:
        async with session.get(f"http://{name}/", headers=headers) as resp:
            text = await resp.text()
            answer: Any
            try:
                answer = json.loads(text)
            except ValueError:
                answer = text[:500]
            return {"service": name, "status": resp.status, "answer": answer}
    except (TimeoutError, aiohttp.ClientError) as exc:
        return {"service": name, "status": 599, "error": f"{type(exc).__name__}: {exc}"[:300]}


async def _root(request: web.Request) -> web.Response:
    spec = request.app[APP]
    if spec.fault.latency:
        await asyncio.sleep(spec.fault.latency)
    if spec.fault.error_rate and random.random() < spec.fault.error_rate:
        return web.json_response({"service": spec.service, "lane": spec.lane, "error": "injected fault"}, status=500)
    wanted = {name.lower() for name in spec.forward}
    headers = {k: v for k, v in request.headers.items() if k.lower() in wanted}
    calls = [await _call(request.app[SESSION], name, headers) for name in spec.calls]
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    body = {
        "service": spec.service,
        "lane": spec.lane,
        "instance": str(Endpoint(sockname[0], sockname[1])) if sockname else None,
        "calls": calls,
    }
    failed = any(call["status"] >= 500 for call in calls)
    return web.json_response(body, status=502 if failed else 200)


async def _echo(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": request.headers.get("Content-Type", "application/octet-stream")})
    await response.prepare(request)
    async for chunk in request.content.iter_chunked(64 * 1024):
        await response.write(chunk)
    await response.write_eof()
    return response


async def _ws(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is aiohttp.WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type is aiohttp.WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def build_demo_app(spec: DemoApp) -> web.Application:
    app = web.Application()
    app[APP] = spec
    app.cleanup_ctx.append(_session_ctx)
    app.router.add_get("/healthz", _healthz)
    app.router.add_post("/echo", _echo)
    app.router.add_get("/ws", _ws)
    app.router.add_route("*", "/{tail:.*}", _root)
    return app


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--service", required=True, help="the service name this app reports")
    parser.add_argument("--lane", required=True, help="the lane this app reports")
    parser.add_argument("--listen", type=host_port, default=host_port("127.0.0.1:8000"),
                        help="HOST:PORT (default 127.0.0.1:8000)")
    parser.add_argument("--calls", type=_names, default=(), help="comma-separated services to call on GET /")
    parser.add_argument("--forward-only", type=_names, default=None,
                        help="forward only these headers to calls (default: the usual tracing and lane headers)")
    parser.add_argument("--fault", type=fault, default=Fault(), metavar="error=F,latency=D",
                        help="misbehave on GET /: answer 500 to a fraction F of requests and/or delay each by D "
                        "(e.g. error=0.2,latency=200ms), to show a rollout's rollback")
    parser.add_argument("--grpc", action="store_true",
                        help="also serve the demo's gRPC method on the same port (needs grpcio: pip install 'lane[grpc]')")
    add_server_arguments(parser)


def run(args: argparse.Namespace) -> int:
    spec = DemoApp(args.service, args.lane, tuple(args.calls), tuple(args.forward_only or DEFAULT_FORWARD),
                   fault=args.fault)

    def ready(bound: dict[str, Endpoint]) -> None:
        announce("demo-app", bound, args.ready_file)

    if args.grpc:
        try:
            from lane.demo.grpc_app import GrpcSpec, serve_grpc_app
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] != "grpc":
                raise
            raise LaneError("'lane demo-app --grpc' needs the Python package 'grpc', which is not installed: "
                            "pip install 'lane[proxy,grpc]'") from None

        grpc_spec = GrpcSpec(spec.service, spec.lane, spec.calls, spec.forward, intercepted=args.forward_only is None)
        return run_loop(serve_grpc_app(grpc_spec, build_demo_app(spec), args.listen, args.drain_seconds, ready))

    async def build() -> tuple[list[Listener], None]:
        return [Listener("app", args.listen, build_demo_app(spec), reuse_port=False)], None

    return run_loop(serve(build, drain_seconds=args.drain_seconds, on_ready=ready, access_log=args.access_log))
