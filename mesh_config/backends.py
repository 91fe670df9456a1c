"""Stub lane backends for `lane mesh verify`: one tiny app per service subset, calling the next.

Each stub plays one ``service@lane`` instance of an app. When called it calls its downstream
services (the verify call graph) through Envoy's ``mesh`` listener -- the sidecar's outbound
side, so the emitted routes and the sidecar Lua decide where each call lands -- forwarding what
a real app forwards (`Forward`: the tag header and baggage, or baggage only; per vector, from
`FORWARD_HEADER`, which it passes on unchanged). It then answers with JSON saying who it is,
the lane headers it received, and the answers of its calls, nested: the reply of the entry is
the whole path the request took.

A stub speaks its service's protocol: an aiohttp app for HTTP, a grpcio server for gRPC
(`mesh_config.grpc_wire`: the same JSON reply as the one message of a unary call); it calls each
callee in the callee's protocol, so a chain may mix them (an HTTP app calling a gRPC one), the
lane carried as headers or metadata alike. A request with `PROBE_HEADER` is answered without
calling anyone (verify's per-service probes).
All stubs bind 127.0.0.1 port 0 and are cleaned up, sessions included, when the ``async with``
block ends. The egress port is only known once Envoy runs, so it arrives as a future. One stub
can be stopped (its listening socket and connections closed: what a client sees of a pod that
died) and started again on the same port (`Backends.stop` / `Backends.start`), for verify's
failover mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from aiohttp import web
from grpc import aio

from . import grpc_wire
from .calls import FORWARD_HEADER, CallGraph, Forward, decode_forward

__all__ = ["PROBE_HEADER", "Backend", "Backends", "run_backends"]

PROBE_HEADER: Final = "x-lane-verify-probe"
_CALL_TIMEOUT: Final = 15.0


@dataclass(frozen=True, slots=True)
class Backend:
    service: str
    lane: str
    port: int
    grpc: bool = False  # a grpcio server, not an HTTP app


@dataclass(frozen=True, slots=True)
class _Callee:
    service: str
    host: str  # what the caller dials: the Host header / :authority
    grpc: bool


@dataclass(frozen=True, slots=True)
class _Stub:
    service: str
    lane: str
    tag_header: str
    grpc: bool
    calls: tuple[_Callee, ...]  # in call order
    egress: asyncio.Future[int]  # the port of Envoy's mesh listener


def _first(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in headers if k == name), None)


class _Instance:
    """One running stub: its listener and the clients its own calls go out on, closed together."""

    def __init__(self, stub: _Stub) -> None:
        self.stub = stub
        self.session: aiohttp.ClientSession | None = None
        self.channels: dict[str, aio.Channel] = {}
        self.stop: Callable[[], Awaitable[Any]] | None = None

    async def start(self, port: int) -> int:
        """Listen on 127.0.0.1:*port* (0: any); returns the port."""
        if self.stub.grpc:
            server, bound = await grpc_wire.serve(self.reply, port)
            self.stop = lambda: server.stop(None)
            return bound
        app = web.Application()
        app[INSTANCE] = self
        app.router.add_route("*", "/{tail:.*}", _answer)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self.stop = runner.cleanup
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
        except BaseException:
            await self.close()
            raise
        return int(runner.addresses[0][1])

    async def close(self) -> None:
        """Stop listening (connections closed: what a client sees of a pod that died), then the clients."""
        stop, self.stop = self.stop, None
        if stop is not None:
            await stop()
        if self.session is not None:
            await self.session.close()
            self.session = None
        channels, self.channels = list(self.channels.values()), {}
        for chan in channels:
            await chan.close()

    async def reply(self, headers: Sequence[tuple[str, str]]) -> dict[str, Any]:
        """The stub's answer to a request with *headers* (names lower-cased), after its own calls."""
        stub = self.stub
        tag = _first(headers, stub.tag_header)
        baggage = [v for k, v in headers if k == "baggage"]
        forward_modes = _first(headers, FORWARD_HEADER)
        mode = decode_forward(forward_modes).get(stub.service, Forward.TAG)
        calls: list[dict[str, Any]] = []
        if _first(headers, PROBE_HEADER) is None and stub.calls:
            forwarded = [("baggage", b) for b in baggage]
            if mode is Forward.TAG and tag is not None:
                forwarded.append((stub.tag_header, tag))
            if forward_modes is not None:
                forwarded.append((FORWARD_HEADER, forward_modes))
            port = await stub.egress
            for callee in stub.calls:
                calls.append(await (self._grpc_call if callee.grpc else self._http_call)(port, callee, forwarded))
        return {"service": stub.service, "lane": stub.lane, "tag": tag, "baggage": ",".join(baggage) or None,
                "forward": mode.value, "user_agent": _first(headers, "user-agent"), "calls": calls}

    async def _http_call(self, port: int, callee: _Callee, headers: list[tuple[str, str]]) -> dict[str, Any]:
        """One HTTP/1.1 call through the mesh listener: its status and JSON reply (or body text)."""
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_CALL_TIMEOUT))
        out: dict[str, Any] = {"to": callee.service}
        try:
            async with self.session.get(f"http://127.0.0.1:{port}/", headers=[*headers, ("Host", callee.host)],
                                        allow_redirects=False) as resp:
                out["status"] = resp.status
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return {**out, "status": 0, "error": f"{type(exc).__name__}: {exc}"}
        try:
            out["reply"] = json.loads(body) if out["status"] == 200 else None
        except ValueError:
            out["reply"] = None
        if out["reply"] is None:
            out["body"] = body[:300].decode("utf-8", "replace")
        return out

    async def _grpc_call(self, port: int, callee: _Callee, metadata: list[tuple[str, str]]) -> dict[str, Any]:
        """One gRPC call through the mesh listener, on a channel kept per callee (as an app keeps one)."""
        if callee.host not in self.channels:
            self.channels[callee.host] = grpc_wire.channel(port, callee.host)
        answer = await grpc_wire.call(self.channels[callee.host], metadata, _CALL_TIMEOUT)
        out: dict[str, Any] = {"to": callee.service, "status": answer.status, "grpc": answer.code,
                               "reply": answer.body if answer.code == "OK" else None}
        if out["reply"] is None:
            out["body"] = str(answer.body)[:300]
        return out


INSTANCE: Final = web.AppKey("instance", _Instance)


async def _answer(request: web.Request) -> web.Response:
    headers = [(name.lower(), value) for name, value in request.headers.items()]
    return web.json_response(await request.app[INSTANCE].reply(headers))


class Backends(Mapping[tuple[str, str], Backend]):
    """The running stubs by ``(service, lane)``; one can be stopped and started again."""

    def __init__(self) -> None:
        self._backends: dict[tuple[str, str], Backend] = {}
        self._stubs: dict[tuple[str, str], _Stub] = {}
        self._running: dict[tuple[str, str], _Instance] = {}

    def __getitem__(self, key: tuple[str, str]) -> Backend:
        return self._backends[key]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._backends)

    def __len__(self) -> int:
        return len(self._backends)

    async def add(self, stub: _Stub) -> None:
        key = (stub.service, stub.lane)
        self._stubs[key] = stub
        instance = self._running[key] = _Instance(stub)
        self._backends[key] = Backend(stub.service, stub.lane, await instance.start(0), stub.grpc)

    async def stop(self, key: tuple[str, str]) -> None:
        """Close the stub's listening socket and connections: its port refuses from now on."""
        instance = self._running.pop(key, None)
        if instance is not None:
            await instance.close()

    async def start(self, key: tuple[str, str]) -> None:
        """Serve a stopped stub again, on the port it had."""
        if key not in self._running:
            instance = _Instance(self._stubs[key])
            await instance.start(self._backends[key].port)
            self._running[key] = instance

    async def close(self) -> None:
        for key in reversed(list(self._running)):
            await self.stop(key)


@contextlib.asynccontextmanager
async def run_backends(
    subsets: Iterable[tuple[str, str]],
    tag_header: str,
    *,
    calls: CallGraph | None = None,
    hosts: Mapping[str, str] | None = None,
    grpc: Collection[str] = (),
    egress: asyncio.Future[int] | None = None,
) -> AsyncIterator[Backends]:
    """Serve one stub per ``(service, lane)`` until the block ends; yields them by that pair.

    A stub of service S calls ``calls[S]`` (reached as ``hosts[callee]``) through the port
    *egress* resolves to; without *calls* the stubs only answer. Services in *grpc* speak gRPC.
    """
    graph, names = calls or {}, hosts or {}
    port = egress if egress is not None else asyncio.get_running_loop().create_future()
    backends = Backends()
    try:
        for service, lane in subsets:
            callees = tuple(_Callee(c, names.get(c, c), c in grpc) for c in graph.get(service, ()))
            await backends.add(_Stub(service, lane, tag_header, service in grpc, callees, port))
        yield backends
    finally:
        await backends.close()
