"""Stub lane backends for `lane mesh verify`: one tiny app per service subset, calling the next.

Each stub plays one ``service@lane`` instance of an app. When called it calls its downstream
services (the verify call graph) through Envoy's ``mesh`` listener -- the sidecar's outbound
side, so the emitted routes and the sidecar Lua decide where each call lands -- forwarding what
a real app forwards (`Forward`: the tag header and baggage, or baggage only; per vector, from
`FORWARD_HEADER`, which it passes on unchanged). It then answers with JSON saying who it is,
the lane headers it received, and the answers of its calls, nested: the reply of the entry is
the whole path the request took.

A request with `PROBE_HEADER` is answered without calling anyone (verify's per-service probes).
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
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from .calls import FORWARD_HEADER, CallGraph, Forward, decode_forward

__all__ = ["PROBE_HEADER", "Backend", "Backends", "run_backends"]

PROBE_HEADER: Final = "x-lane-verify-probe"
_CALL_TIMEOUT: Final = aiohttp.ClientTimeout(total=15)


@dataclass(frozen=True, slots=True)
class Backend:
    service: str
    lane: str
    port: int


@dataclass(frozen=True, slots=True)
class _Stub:
    service: str
    lane: str
    tag_header: str
    calls: tuple[tuple[str, str], ...]  # (service, host) in call order
    egress: asyncio.Future[int]  # the port of Envoy's mesh listener


STUB: Final = web.AppKey("stub", _Stub)
SESSION: Final = web.AppKey("session", aiohttp.ClientSession)


async def _session(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession(timeout=_CALL_TIMEOUT) as session:
        app[SESSION] = session
        yield


async def _call(session: aiohttp.ClientSession, port: int, service: str, host: str,
                headers: CIMultiDict[str]) -> dict[str, Any]:
    """One downstream call through the mesh listener: its status and JSON reply (or body text)."""
    out: dict[str, Any] = {"to": service}
    try:
        async with session.get(f"http://127.0.0.1:{port}/", headers=CIMultiDict(headers, Host=host),
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


async def _answer(request: web.Request) -> web.Response:
    stub = request.app[STUB]
    tag = request.headers.get(stub.tag_header)
    baggage = request.headers.getall("baggage", [])
    mode = decode_forward(request.headers.get(FORWARD_HEADER)).get(stub.service, Forward.TAG)
    calls: list[dict[str, Any]] = []
    if PROBE_HEADER not in request.headers and stub.calls:
        forwarded: CIMultiDict[str] = CIMultiDict(("baggage", b) for b in baggage)
        if mode is Forward.TAG and tag is not None:
            forwarded[stub.tag_header] = tag
        if FORWARD_HEADER in request.headers:
            forwarded[FORWARD_HEADER] = request.headers[FORWARD_HEADER]
        port = await stub.egress
        for service, host in stub.calls:
            calls.append(await _call(request.app[SESSION], port, service, host, forwarded))
    return web.json_response({
        "service": stub.service,
        "lane": stub.lane,
        "tag": tag,
        "baggage": ",".join(baggage) or None,
        "forward": mode.value,
        "calls": calls,
    })


async def _serve(stub: _Stub, port: int) -> web.AppRunner:
    app = web.Application()
    app[STUB] = stub
    app.cleanup_ctx.append(_session)
    app.router.add_route("*", "/{tail:.*}", _answer)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


class Backends(Mapping[tuple[str, str], Backend]):
    """The running stubs by ``(service, lane)``; one can be stopped and started again."""

    def __init__(self) -> None:
        self._backends: dict[tuple[str, str], Backend] = {}
        self._stubs: dict[tuple[str, str], _Stub] = {}
        self._runners: dict[tuple[str, str], web.AppRunner] = {}

    def __getitem__(self, key: tuple[str, str]) -> Backend:
        return self._backends[key]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._backends)

    def __len__(self) -> int:
        return len(self._backends)

    async def add(self, stub: _Stub) -> None:
        key = (stub.service, stub.lane)
        self._stubs[key] = stub
        self._runners[key] = await _serve(stub, 0)
        self._backends[key] = Backend(stub.service, stub.lane, int(self._runners[key].addresses[0][1]))

    async def stop(self, key: tuple[str, str]) -> None:
        """Close the stub's listening socket and connections: its port refuses from now on."""
        runner = self._runners.pop(key, None)
        if runner is not None:
            await runner.cleanup()

    async def start(self, key: tuple[str, str]) -> None:
        """Serve a stopped stub again, on the port it had."""
        if key not in self._runners:
            self._runners[key] = await _serve(self._stubs[key], self._backends[key].port)

    async def close(self) -> None:
        for key in reversed(list(self._runners)):
            await self.stop(key)


@contextlib.asynccontextmanager
async def run_backends(
    subsets: Iterable[tuple[str, str]],
    tag_header: str,
    *,
    calls: CallGraph | None = None,
    hosts: Mapping[str, str] | None = None,
    egress: asyncio.Future[int] | None = None,
) -> AsyncIterator[Backends]:
    """Serve one stub per ``(service, lane)`` until the block ends; yields them by that pair.

    A stub of service S calls ``calls[S]`` (reached as ``hosts[callee]``) through the port
    *egress* resolves to; without *calls* the stubs only answer.
    """
    graph, names = calls or {}, hosts or {}
    port = egress if egress is not None else asyncio.get_running_loop().create_future()
    backends = Backends()
    try:
        for service, lane in subsets:
            await backends.add(_Stub(service, lane, tag_header,
                                     tuple((callee, names.get(callee, callee)) for callee in graph.get(service, ())),
                                     port))
        yield backends
    finally:
        await backends.close()
