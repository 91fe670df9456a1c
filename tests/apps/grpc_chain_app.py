"""A gRPC service in a lane chain: a real ``grpcio`` server with lane's interceptors, behind a lane sidecar.

Serves ``lanetest.Chain`` with generic handlers and JSON-in-bytes messages (no protoc), the four RPC
kinds plus a few that exercise gRPC semantics. When ``APP_NEXT`` names a service, every RPC calls the
same method of that service with the same kind, through the sidecar's outbound port
(``APP_OUTBOUND``) with ``grpc.default_authority`` set to the service name, as an app in a mesh does;
lane's client and server interceptors carry the lane (tag metadata and baggage) across the app.

* ``Unary``/``ServerStream``/``ClientStream``/``Bidi``: a report (service, lane, lane metadata it got,
  deadline left) wrapping the next service's; streams pass each message on as it comes;
* ``Fail``: the last service aborts with ``FAILED_PRECONDITION``, details and trailing metadata
  (binary ones, and ``grpc-status-details-bin``: gRPC's rich error model); the others pass on
  exactly the status they got;
* ``Slow``: the last service waits (up to 5 s) for its deadline or a cancel, and reports what it saw;
* ``Ticks``: the last service streams a tick every 50 ms until cancelled, then appends ``cancelled``
  to ``APP_EVENTS``; the others cancel their call when theirs is cancelled (what grpc-go does itself).

Configured by ``APP_*`` variables (see ``app_env``); ``APP_CALL_VIA`` must be ``host``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app_env import CALL_TIMEOUT, AppEnv, read_env

from lane.propagation.grpc_client import LaneClientInterceptor
from lane.propagation.grpc_server import LaneServerInterceptor

__all__ = ["main"]

SERVICE = "lanetest.Chain"
CUSTOM_TRAILERS = ("x-app-detail", "x-app-detail-bin", "grpc-status-details-bin")


def _rich_status(message: str, service: str) -> bytes:
    """gRPC's rich error model (what grpcio-status sends): a google.rpc.Status with an ErrorInfo detail."""
    from google.protobuf import any_pb2
    from google.rpc import error_details_pb2, status_pb2

    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason="NOT_READY", domain="lanetest", metadata={"at": service}))
    return bytes(status_pb2.Status(code=grpc.StatusCode.FAILED_PRECONDITION.value[0], message=message,
                                   details=[detail]).SerializeToString())


def _report(env: AppEnv, context: grpc.ServicerContext, **extra: Any) -> dict[str, Any]:
    seen: dict[str, list[str]] = {"x-mse-tag": [], "baggage": []}
    for key, value in context.invocation_metadata():
        if key in seen:
            seen[key].append(str(value))
    left = context.time_remaining()
    return {"service": env.service, "lane": env.lane, "received": seen,
            "deadline": None if left is None else round(left, 3), **extra}


def _dump(report: dict[str, Any]) -> bytes:
    return json.dumps(report).encode()


class Chain:
    def __init__(self, env: AppEnv) -> None:
        self.env = env
        self.next = env.next[0] if env.next else None
        self.channel: grpc.Channel | None = None
        if self.next:
            raw = grpc.insecure_channel(env.outbound or "", options=[("grpc.default_authority", self.next)])
            self.channel = grpc.intercept_channel(raw, LaneClientInterceptor())
        events = os.environ.get("APP_EVENTS")
        self.events = Path(events) if events else None

    def _timeout(self, context: grpc.ServicerContext) -> float:
        left = context.time_remaining()
        return CALL_TIMEOUT if left is None else max(0.001, left)

    def _method(self, kind: str, name: str) -> Any:
        assert self.channel is not None
        return getattr(self.channel, kind)(f"/{SERVICE}/{name}")

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        below = None
        if self.next:
            below = json.loads(self._method("unary_unary", "Unary")(request, timeout=self._timeout(context)))
        return _dump(_report(self.env, context, next=below, request=request.decode()))

    def server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        if not self.next:
            for i in range(3):
                yield _dump(_report(self.env, context, index=i, next=None))
            return
        call = self._method("unary_stream", "ServerStream")(request, timeout=self._timeout(context))
        context.add_callback(call.cancel)
        for answer in call:
            yield _dump(_report(self.env, context, next=json.loads(answer)))

    def client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        if not self.next:
            got = [r.decode() for r in requests]
            return _dump(_report(self.env, context, messages=got, next=None))
        answer = self._method("stream_unary", "ClientStream")(requests, timeout=self._timeout(context))
        return _dump(_report(self.env, context, next=json.loads(answer)))

    def bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        if not self.next:
            for request in requests:  # one answer per message, as it arrives
                yield _dump(_report(self.env, context, echo=request.decode(), next=None))
            return
        call = self._method("stream_stream", "Bidi")(requests, timeout=self._timeout(context))
        context.add_callback(call.cancel)
        for answer in call:
            yield _dump(_report(self.env, context, next=json.loads(answer)))

    def fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if not self.next:
            message = f"precondition failed at {self.env.service} (é)"
            context.set_trailing_metadata((("x-app-detail", f"{self.env.service}@{self.env.lane}"),
                                           ("x-app-detail-bin", b"\x00\xffbinary"),
                                           ("grpc-status-details-bin", _rich_status(message, self.env.service))))
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, message)
        try:
            self._method("unary_unary", "Fail")(request, timeout=self._timeout(context))
        except grpc.RpcError as exc:  # pass on exactly what came back
            context.set_trailing_metadata(tuple((k, v) for k, v in exc.trailing_metadata() or ()
                                                if k in CUSTOM_TRAILERS))
            context.abort(exc.code(), exc.details())
        return b""

    def slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if self.next:
            try:
                return bytes(self._method("unary_unary", "Slow")(request, timeout=self._timeout(context)))
            except grpc.RpcError as exc:
                context.abort(exc.code(), exc.details())
        report = _report(self.env, context)
        until = time.monotonic() + 5.0
        while context.is_active() and time.monotonic() < until:
            time.sleep(0.01)
        self._event(f"slow ended active={context.is_active()} deadline={report['deadline']}")
        return _dump(report)

    def ticks(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        if self.next:
            call = self._method("unary_stream", "Ticks")(request, timeout=self._timeout(context))
            context.add_callback(call.cancel)
            yield from call
            return
        cancelled = threading.Event()
        context.add_callback(cancelled.set)
        i = 0
        try:
            while not cancelled.wait(0.05) and i < 400:
                yield _dump(_report(self.env, context, tick=i))
                i += 1
        finally:
            if cancelled.is_set():
                self._event("cancelled")

    def _event(self, line: str) -> None:
        if self.events is not None:
            with self.events.open("a", encoding="utf-8") as out:
                out.write(line + "\n")

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
            "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
            "Ticks": grpc.unary_stream_rpc_method_handler(self.ticks),
        })


def main() -> int:
    env = read_env()
    if env.next and env.via != "host":
        print("grpc_chain_app.py: APP_CALL_VIA must be host (gRPC dials the outbound port)", file=sys.stderr)
        return 2
    server = grpc.server(ThreadPoolExecutor(max_workers=128), interceptors=[LaneServerInterceptor()])
    server.add_generic_rpc_handlers((Chain(env).handlers(),))
    port = server.add_insecure_port(f"127.0.0.1:{env.port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    env.announce(port)
    stop.wait()
    server.stop(1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
