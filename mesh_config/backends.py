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
block ends. The egress port is only known once Envoy runs, so it arrives as a future.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from .calls import FORWARD_HEADER, CallGraph, Forward, decode_forward

__all__ = ["PROBE_HEADER", "Backend", "run_backends"]

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


@contextlib.asynccontextmanager
async def run_backends(
    subsets: Iterable[tuple[str, str]],
    tag_header: str,
    *,
    calls: CallGraph | None = None,
    hosts: Mapping[str, str] | None = None,
    egress: asyncio.Future[int] | None = None,
) -> AsyncIterator[Mapping[tuple[str, str], Backend]]:
    """Serve one stub per ``(service, lane)`` until the block ends; yields them by that pair.

    A stub of service S calls ``calls[S]`` (reached as ``hosts[callee]``) through the port
    *egress* resolves to; without *calls* the stubs only answer.
    """
    runners: list[web.AppRunner] = []
    out: dict[tuple[str, str], Backend] = {}
    graph, names = calls or {}, hosts or {}
    port = egress if egress is not None else asyncio.get_running_loop().create_future()
    try:
        for service, lane in subsets:
            app = web.Application()
            app[STUB] = _Stub(service, lane, tag_header,
                              tuple((callee, names.get(callee, callee)) for callee in graph.get(service, ())), port)
            app.cleanup_ctx.append(_session)
            app.router.add_route("*", "/{tail:.*}", _answer)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            out[(service, lane)] = Backend(service, lane, int(runner.addresses[0][1]))
        yield out
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
