"""gRPC personas' calls from inside locust: real grpcio, made gevent-friendly, the lane from the metadata.

grpcio does its I/O in C; in a gevent process (locust) it must be switched to gevent's loop with
``grpc.experimental.gevent.init_gevent()`` before the first channel exists, or every call blocks the
whole process. `GrpcCaller` owns one user's channels (one per user agent: grpcio takes it as a channel
option, ``grpc.primary_user_agent``, and appends its own) and closes them. An answer's ``x-lane-path``
is in its initial metadata, or, for a trailers-only error (a 503 from the gateway, no instance), in the
trailers; the gRPC status is what a failure is named after.

Imports grpc: load it only when a gRPC persona exists (`agent_suffix`, `grpc_available` import lazily).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Final

from lane.core.hops import PATH_HEADER

__all__ = ["GrpcAnswer", "GrpcCaller", "agent_suffix", "grpc_available"]

_TIMEOUT: Final = 10.0  # seconds: a call's deadline
_gevent_ready = False


def grpc_available() -> bool:
    try:
        importlib.import_module("grpc")
    except ImportError:
        return False
    return True


def agent_suffix() -> str:
    """What grpcio appends to the user agent a client names (``grpc-python/1.85.3 grpc-c/58.0.0 (linux; chttp2)``).

    The core version is not public API; the rules a gateway writes for gRPC clients match on the
    prefix (the demo's ``xiaoming grpc-``), which this reproduces exactly.
    """
    import sys

    import grpc

    platform = "linux" if sys.platform.startswith("linux") else sys.platform
    return f"grpc-python/{grpc.__version__} grpc-c ({platform}; chttp2)"


def _init_gevent() -> None:
    global _gevent_ready
    if not _gevent_ready:
        import grpc.experimental.gevent as grpc_gevent

        grpc_gevent.init_gevent()
        _gevent_ready = True


@dataclass(frozen=True, slots=True)
class GrpcAnswer:
    status: str  # the gRPC status name: OK, UNAVAILABLE, ...
    details: str
    path: str | None  # the x-lane-path value, from the metadata or the trailers
    length: int  # bytes of the answer message

    @property
    def ok(self) -> bool:
        return self.status == "OK"


def _path_of(*metadata: Any) -> str | None:
    values = [str(v) for md in metadata for k, v in (md or ()) if k == PATH_HEADER]
    return ", ".join(values) or None


class GrpcCaller:
    """One locust user's gRPC channels to *target* (``host:port``), by user agent."""

    def __init__(self, target: str) -> None:
        _init_gevent()
        self.target = target
        self.channels: dict[str, Any] = {}

    def call(self, method: str, agent: str, metadata: tuple[tuple[str, str], ...]) -> GrpcAnswer:
        import grpc

        channel = self.channels.get(agent)
        if channel is None:
            channel = grpc.insecure_channel(self.target, options=[
                ("grpc.primary_user_agent", agent), ("grpc.enable_http_proxy", 0)])
            self.channels[agent] = channel
        try:
            answer, call = channel.unary_unary(method).with_call(b"{}", metadata=metadata, timeout=_TIMEOUT)
        except grpc.RpcError as exc:
            if not isinstance(exc, grpc.Call):
                return GrpcAnswer("UNKNOWN", str(exc), None, 0)
            return GrpcAnswer(exc.code().name, exc.details() or "",
                              _path_of(exc.initial_metadata(), exc.trailing_metadata()), 0)
        return GrpcAnswer("OK", "", _path_of(call.initial_metadata()), len(answer or b""))

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
        self.channels.clear()
