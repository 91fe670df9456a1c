"""gRPC for `lane mesh verify`: the one method its stub apps serve, and real grpcio calls to it.

A gRPC service's stub is a real grpcio server (``grpc.aio``) serving one unary method, `METHOD`,
without protobuf: the request is empty and the reply is the JSON an HTTP stub answers, as raw
bytes (gRPC frames any bytes; what makes a call gRPC is HTTP/2, ``content-type: application/grpc``,
the length-prefixed message and the trailers). Calls are made by real grpcio clients over h2c:
the lane travels as metadata, which *is* HTTP/2 headers, and ``:authority`` is the callee's host
(``grpc.default_authority``, what an app dialing ``host:port`` sends), so Envoy picks the virtual
host, the route and the Lua sees the request exactly as for HTTP/1.1.

An outcome is reported in verify's HTTP terms so one chain check serves both protocols: OK is
200, UNAVAILABLE is 503 -- what every answer Envoy makes itself becomes for a gRPC caller (a
strict lane's direct 503, no healthy upstream, a refused connection: a trailers-only answer with
``grpc-status: 14`` and the text in ``grpc-message``) -- and any other status 500; the status
name is kept for the report.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import grpc
from grpc import aio

__all__ = ["METHOD", "GrpcAnswer", "call", "channel", "http_status", "serve"]

SERVICE: Final = "lane.verify.Stub"
METHOD: Final = f"/{SERVICE}/Call"
Metadata = Sequence[tuple[str, str]]
Answer = Callable[[Metadata], Awaitable[dict[str, Any]]]  # the stub's reply to a call's metadata
# no SO_REUSEPORT (grpcio's default is on): a stopped stub's port must refuse, as a dead pod's does
_SERVER_OPTIONS: Final = (("grpc.so_reuseport", 0),)


@dataclass(frozen=True, slots=True)
class GrpcAnswer:
    status: int  # in verify's HTTP terms: 200 OK, 503 UNAVAILABLE, 500 any other status
    code: str  # the gRPC status name: OK, UNAVAILABLE, ...
    body: Any  # the stub's JSON reply when OK, else grpc-message


def http_status(code: grpc.StatusCode) -> int:
    if code is grpc.StatusCode.OK:
        return 200
    return 503 if code is grpc.StatusCode.UNAVAILABLE else 500


def channel(port: int, authority: str, user_agent: str | None = None) -> aio.Channel:
    """A channel to 127.0.0.1:*port* whose calls carry ``:authority: authority`` and, with
    *user_agent*, a ``user-agent`` starting with it (grpcio ignores one given as metadata)."""
    options = [("grpc.default_authority", authority)]
    if user_agent is not None:
        options.append(("grpc.primary_user_agent", user_agent))
    return aio.insecure_channel(f"127.0.0.1:{port}", options=options)


async def call(chan: aio.Channel, metadata: Metadata, timeout: float = 15.0) -> GrpcAnswer:
    """One call of `METHOD`; a status other than OK is an answer too, not an exception."""
    method = chan.unary_unary(METHOD)
    try:
        reply = await method(b"", metadata=tuple(metadata), timeout=timeout)
    except aio.AioRpcError as exc:
        return GrpcAnswer(http_status(exc.code()), exc.code().name, exc.details() or "")
    try:
        return GrpcAnswer(200, "OK", json.loads(reply))
    except ValueError:
        return GrpcAnswer(200, "OK", None)


async def serve(answer: Answer, port: int = 0) -> tuple[aio.Server, int]:
    """A started grpcio server on 127.0.0.1:*port* (0: any) answering `METHOD` with *answer*."""

    async def unary(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        metadata = [(str(k), v if isinstance(v, str) else v.decode("latin-1"))
                    for k, v in context.invocation_metadata() or ()]
        return json.dumps(await answer(metadata)).encode("utf-8")

    handler = grpc.method_handlers_generic_handler(SERVICE, {"Call": grpc.unary_unary_rpc_method_handler(unary)})
    server = aio.server(options=_SERVER_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if not bound:
        raise OSError(f"cannot listen on 127.0.0.1:{port}")
    await server.start()
    return server, bound
