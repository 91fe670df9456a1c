"""``lane demo-grpc``: one gRPC call through the demo's gateway, printed the way ``curl`` shows one.

A real grpcio client dials the gateway's port (h2c, the port curl uses) and calls
``/lane.demo.Demo/Call``. ``--agent`` is its user agent: the gateway colors by ``User-Agent`` and a
grpcio client cannot send one of its own alone, grpc adds itself after it
(``xiaoming grpc-python/1.x grpc-c/...``), which the demo config colors with a rule of its own
(``xiaoming-grpc``).
The answer is the entry app's JSON report with ``"path"`` and ``"hops"`` from the response metadata
``x-lane-path``, the same document ``curl -A xiaoming`` prints (the gateway adds them to JSON bodies
itself; a gRPC message it leaves alone, so the client does it with the same function).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Final

import grpc

from lane.core.endpoint import Endpoint, parse_endpoint
from lane.core.hops import PATH_HEADER
from lane.dataplane.explain import explained
from lane.demo.grpc_app import CALL_METHOD

__all__ = ["add_arguments", "gateway", "run"]

DEFAULT_GATEWAY: Final = "127.0.0.1:8080"


def gateway(text: str) -> Endpoint:
    """``HOST:PORT``, or the gateway URL the demo's banner prints (``http://127.0.0.1:8080/``)."""
    try:
        return parse_endpoint(text.strip().removeprefix("http://").rstrip("/"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway", type=gateway, default=gateway(DEFAULT_GATEWAY),
                        help=f"the demo gateway, HOST:PORT or its URL (default {DEFAULT_GATEWAY}, `lane demo`'s)")
    parser.add_argument("--agent", "-A", default=None,
                        help="the client's user agent, as curl -A (xiaoming is colored gray); default grpc's own")
    parser.add_argument("--timeout", type=float, default=10.0, help="the call's deadline in seconds (default 10)")


def _path_of(*metadata: Any) -> str | None:
    """The ``x-lane-path`` of an answer: initial metadata, or the trailers of a trailers-only error."""
    values = [str(v) for md in metadata for k, v in (md or ()) if k == PATH_HEADER]
    return ", ".join(values) or None


def run(args: argparse.Namespace) -> int:
    options = [("grpc.enable_http_proxy", 0)]  # the gateway is on loopback: never through a proxy
    if args.agent:
        options.append(("grpc.primary_user_agent", args.agent))
    target = str(args.gateway)
    with grpc.insecure_channel(target, options=options) as channel:
        try:
            answer, call = channel.unary_unary(CALL_METHOD).with_call(b"{}", timeout=args.timeout)
        except grpc.RpcError as exc:
            code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            path = _path_of(exc.trailing_metadata(), exc.initial_metadata()) if isinstance(exc, grpc.Call) else None
            print(f"lane demo-grpc: {target}: {code}: {details}" + (f" (x-lane-path: {path})" if path else ""),
                  file=sys.stderr)
            return 1
    sys.stdout.write(explained(answer, _path_of(call.initial_metadata())).decode())
    return 0
