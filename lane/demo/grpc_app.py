"""The gRPC side of a demo app (``lane demo-app --grpc``): the same call graph as ``GET /``, over gRPC.

``/lane.demo.Demo/Call`` (unary, a JSON document in the message bytes: no protoc, no generated code)
calls the same method of each service in ``--calls``, in order, through the sidecar's outbound port
(the app's ``HTTP_PROXY``, dialed directly, with ``grpc.default_authority`` = the service name, as an
app in a mesh does) and answers ``{"service", "lane", "instance", "calls": [...]}`` like ``GET /``.
The lane travels the way a real app carries it: lane's gRPC interceptors
(`lane.propagation.grpc_server` extracts it into the handler's context, `lane.propagation.grpc_client`
writes it into each call), plus the request id. An app that forwards only some headers (``d``:
``--forward-only x-request-id``) uses no interceptor and copies just those metadata keys, so its
sidecar must recover the lane from the trace id, as for HTTP.

`serve_grpc_app` runs the grpcio server (on a Unix socket) beside the aiohttp one, both reached on the
app's one port (`lane.demo.protocol_front`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import grpc
from aiohttp import web

from lane.core.endpoint import Endpoint
from lane.demo.protocol_front import FrontProtocol
from lane.propagation.grpc_client import LaneClientInterceptor
from lane.propagation.grpc_server import LaneServerInterceptor

__all__ = ["CALL_METHOD", "GrpcDemo", "GrpcSpec", "outbound_address", "serve_grpc_app"]

log = logging.getLogger(__name__)

CALL_METHOD: Final = "/lane.demo.Demo/Call"
# What lane's interceptors carry themselves (from the handler's context); the rest is copied as metadata.
_CARRIED: Final = frozenset({"x-mse-tag", "baggage", "traceparent", "tracestate"})
_NO_PROXY: Final = ("grpc.enable_http_proxy", 0)  # grpcio would CONNECT through HTTP_PROXY; we dial it ourselves


def outbound_address() -> str | None:
    """The sidecar's outbound port, from the app's ``HTTP_PROXY`` (what its HTTP calls use too)."""
    proxy = os.environ.get("HTTP_PROXY") or os.environ.get("http_proxy")
    return urlsplit(proxy).netloc or None if proxy else None


@dataclass(frozen=True, slots=True)
class GrpcSpec:
    service: str
    lane: str
    calls: tuple[str, ...]
    forward: tuple[str, ...]  # the metadata keys the app passes on
    intercepted: bool  # lane's interceptors carry the lane (False: the app forwards only `forward`)
    call_timeout: float = 10.0


class GrpcDemo:
    def __init__(self, spec: GrpcSpec, outbound: str | None, instance: str) -> None:
        self.spec = spec
        self.instance = instance
        self.intercepted = spec.intercepted
        self.wanted = {name.lower() for name in spec.forward} - (_CARRIED if self.intercepted else set())
        self.channels: dict[str, grpc.Channel] = {}
        for name in spec.calls:
            channel = grpc.insecure_channel(outbound or name, options=[("grpc.default_authority", name), _NO_PROXY])
            self.channels[name] = (grpc.intercept_channel(channel, LaneClientInterceptor()) if self.intercepted
                                   else channel)

    def call(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata = tuple((k, str(v)) for k, v in context.invocation_metadata() if k in self.wanted)
        left = context.time_remaining()
        timeout = min(self.spec.call_timeout, left) if left is not None else self.spec.call_timeout
        calls = [self._call(name, request, metadata, timeout) for name in self.spec.calls]
        report = {"service": self.spec.service, "lane": self.spec.lane, "instance": self.instance, "calls": calls}
        failed = [c for c in calls if c["status"] != "OK"]
        if failed:  # a broken path is visible in the status, as GET / answers 502
            context.abort(grpc.StatusCode.UNAVAILABLE, f"call to {failed[0]['service']} failed: {failed[0]['error']}")
        return json.dumps(report).encode()

    def _call(self, name: str, request: bytes, metadata: tuple[tuple[str, str], ...], timeout: float) -> dict[str, Any]:
        try:
            answer = self.channels[name].unary_unary(CALL_METHOD)(request, metadata=metadata, timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            return {"service": name, "status": code.name, "error": str(details)[:300]}
        return {"service": name, "status": "OK", "answer": json.loads(answer)}

    def handlers(self) -> grpc.GenericRpcHandler:
        service, _, method = CALL_METHOD.strip("/").partition("/")
        return grpc.method_handlers_generic_handler(service, {method: grpc.unary_unary_rpc_method_handler(self.call)})

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()


async def serve_grpc_app(spec: GrpcSpec, app: web.Application, listen: Endpoint, drain_seconds: float,
                         on_ready: Callable[[dict[str, Endpoint]], None]) -> int:
    """Serve *app* (HTTP/1.1) and the gRPC demo on *listen* until SIGTERM/SIGINT, then drain both."""
    loop = asyncio.get_running_loop()
    demo = GrpcDemo(spec, outbound_address(), str(listen))
    server = grpc.server(ThreadPoolExecutor(max_workers=32), interceptors=[LaneServerInterceptor()])
    server.add_generic_rpc_handlers((demo.handlers(),))
    workdir = tempfile.TemporaryDirectory(prefix="lane-demo-app-")
    grpc_socket = str(Path(workdir.name) / "grpc.sock")
    server.add_insecure_port(f"unix:{grpc_socket}")
    server.start()
    runner = web.AppRunner(app, shutdown_timeout=drain_seconds)
    await runner.setup()
    http = runner.server
    assert http is not None
    try:
        front = await loop.create_server(lambda: FrontProtocol(http, grpc_socket), listen.host, listen.port)
    except OSError as exc:  # as `lane.process.server.serve` says it: one line, exit 2
        log.error("app cannot listen on %s: %s", listen, exc.strerror or exc)
        server.stop(0)
        await runner.cleanup()
        workdir.cleanup()
        return 2
    host, port = front.sockets[0].getsockname()[:2]
    demo.instance = str(Endpoint(host, port))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    on_ready({"app": Endpoint(host, port)})
    try:
        await stop.wait()
    finally:
        front.close()
        grace = server.stop(drain_seconds)
        await runner.cleanup()
        await loop.run_in_executor(None, grace.wait)
        demo.close()
        workdir.cleanup()
    return 0
