"""`lane mesh verify`: the rendered objects, run in a real Envoy, against the Python data plane.

One Envoy process (`mesh_config.bootstrap`: the emitted Lua verbatim, routes equivalent to the
emitted VirtualServices) sits in front of stub apps, one per service subset, that call each
other *through* Envoy's ``mesh`` listener along a call graph (`mesh_config.calls`: by default
the entry, then every other service in config order, as one chain). Each vector is sent to the
gateway listener; the entry's reply nests every call below it, so it is the real path the
request took, e.g. ``a@gray → b@base → c@gray`` for the demo's gray user: b has no gray subset,
yet the lane survives it and c serves gray again.

Every hop of that path is held to the Python data plane: the gateway's lane must be one the
Python engine gives the request, each hop must be served by `LaneConfig.lane_for` of that lane
(or refused with 503 where no instance may serve it), and each hop must receive the lane in both
the tag header and baggage (`mesh_config.chain`). How each app forwards is configurable per
service and per vector (tag and baggage, or baggage only -- which only the sidecar Lua turns
back into a routable tag).

The chain only reaches what the call graph reaches, and stops at a refusal; so every lane the
gateway sets is also *probed* at every service directly through ``mesh`` (with the tag header,
and with only a baggage member when the sidecar filter is rendered). Probes catch a wrong route
that no call in the graph uses, e.g. to the entry service from inside the mesh.

A ``protocol: grpc`` service is played by a grpcio server and called by grpcio clients, the lane
in metadata (`mesh_config.grpc_wire`), over HTTP/2 clusters as istiod builds them for a ``grpc``
port: its hops and probes are real gRPC calls through Envoy, and a gRPC entry gets each vector as
a gRPC client can send it (`mesh_config.grpc_vectors`), judged by Python as sent.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from grpc import aio

from lane.core.config import LaneConfig

from . import grpc_wire
from .backends import PROBE_HEADER, Backends, run_backends
from .bootstrap import GATEWAY_LISTENER, MESH_LISTENER, VerifyError, envoy_bootstrap, sidecar_filter_rendered
from .calls import (
    FORWARD_HEADER,
    CallGraph,
    Forward,
    check_calls,
    default_calls,
    encode_forward,
    parse_forward,
)
from .chain import ChainHop, chain_from_reply, chain_paths, chain_problems
from .envoy import run_envoy
from .grpc_vectors import UserAgent, as_grpc, learn_user_agent
from .lanes import Presence, present_lanes
from .render import render_objects
from .vectors import Vector, python_lanes, vectors_for

__all__ = ["Probe", "VectorResult", "VerifyError", "envoy_bootstrap", "format_result", "verify"]

GATEWAY_HOST: Final = "lane-verify.test"
_REFUSED: Final = re.compile(r"no instance of (?P<service>\S+) may serve lane (?P<lane>\S+)\n")


@dataclass(frozen=True, slots=True)
class Probe:
    """One service called straight through ``mesh`` with a lane (tag header or baggage only)."""

    service: str
    lane: str
    via: str  # "tag" or "baggage"
    expected: str | None  # subset lane_for says; None: 503
    got: str | None  # subset that answered; None: no backend answered
    status: int
    tag: str | None = None  # the tag header the backend received

    @property
    def ok(self) -> bool:
        if self.expected is None:
            return self.status == 503 and self.got is None
        return self.status == 200 and self.got == self.expected and self.tag == self.lane


@dataclass(frozen=True, slots=True)
class VectorResult:
    vector: Vector
    python: frozenset[str]
    tag: str | None  # the lane the gateway filter set
    path: ChainHop  # the entry hop; its calls are the rest of the path
    probes: tuple[Probe, ...] = ()
    problems: tuple[str, ...] = field(default=())
    notes: tuple[str, ...] = ()  # a gRPC entry: what of the vector a gRPC client cannot send

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def hops(self) -> tuple[ChainHop, ...]:
        """Every hop of the path, depth first."""
        return tuple(hop for _, hop in self.path.walk())


def _dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2:]
    return out


async def _send(port: int, host: str, target: str, headers: Iterable[tuple[str, str]]) -> tuple[int, Any]:
    """One raw HTTP/1.1 request (headers byte for byte, repeats kept): (status, JSON body of a 200,
    else the body text)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    try:
        lines = [f"GET {target} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers), "Connection: close"]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    try:
        return status, json.loads(body) if status == 200 else body.decode("utf-8", "replace")
    except ValueError:
        return status, None


class _Runner:
    def __init__(self, config: LaneConfig, present: Presence, ports: Mapping[str, int], sidecar: bool) -> None:
        self.config, self.present, self.ports, self.sidecar = config, present, ports, sidecar
        self.gateway_host = next((h for h in config.mesh.gateway.hosts if h != "*"), GATEWAY_HOST)
        self.probed: dict[str, asyncio.Task[tuple[Probe, ...]]] = {}
        self.channels: dict[tuple[int, str, str | None], aio.Channel] = {}  # (listener, authority, user-agent)
        self.agent = UserAgent("")

    async def close(self) -> None:
        for chan in self.channels.values():
            await chan.close()

    async def send(self, grpc: bool, port: int, host: str, target: str, headers: Iterable[tuple[str, str]],
                   user_agent: str | None = None) -> tuple[int, Any, str | None]:
        """One request as HTTP/1.1 (`_send`) or as a gRPC call on a channel kept for reuse: (status,
        JSON reply of a 200, else text, the gRPC status name of a gRPC call)."""
        if not grpc:
            return (*await _send(port, host, target, headers), None)
        key = (port, host, user_agent)
        if key not in self.channels:
            self.channels[key] = grpc_wire.channel(port, host, user_agent)
        answer = await grpc_wire.call(self.channels[key], [(k.lower(), v) for k, v in headers])
        return answer.status, answer.body, answer.code

    def expected(self, service: str, lane: str) -> str | None:
        return self.config.lane_for(service, lane, lambda s, candidate: candidate in self.present.get(s, frozenset()))

    async def probe(self, service: str, lane: str, via: str) -> Probe:
        svc = self.config.services[service]
        if via == "tag":
            lane_header = (self.config.tag.header, lane)
        else:
            lane_header = ("baggage", f"other=1,{self.config.tag.baggage_key}={lane}")
        status, body, _ = await self.send(svc.grpc, self.ports[MESH_LISTENER], svc.host, "/",
                                          [lane_header, (PROBE_HEADER, "1")])
        answered = isinstance(body, dict) and body.get("service") == service
        got, tag = (body.get("lane"), body.get("tag")) if answered else (None, None)
        return Probe(service, lane, via, self.expected(service, lane), got, status, tag)

    async def _probes(self, lane: str) -> tuple[Probe, ...]:
        vias = ("tag", "baggage") if self.sidecar else ("tag",)
        return tuple([await self.probe(s, lane, via) for s in sorted(self.config.services) for via in vias])

    def probes(self, lane: str) -> asyncio.Task[tuple[Probe, ...]]:
        """The probes of *lane*, run once however many vectors get that lane."""
        if lane not in self.probed:
            self.probed[lane] = asyncio.ensure_future(self._probes(lane))
        return self.probed[lane]

    async def run(self, vector: Vector, forward: Mapping[str, Forward]) -> VectorResult:
        config = self.config
        grpc, judged, headers, agent = config.service(config.entry).grpc, vector, vector.headers, None
        notes: tuple[str, ...] = ()
        if grpc:
            sent = as_grpc(vector, self.agent)
            judged, headers, agent, notes = sent.judged, sent.metadata, sent.user_agent, sent.notes
        python = python_lanes(config.rules, judged.view(self.gateway_host), config.default_lane)
        headers = (*headers, (FORWARD_HEADER, encode_forward(forward)))
        status, body, code = await self.send(grpc, self.ports[GATEWAY_LISTENER], self.gateway_host, vector.target,
                                             headers, agent)
        problems: list[str] = []
        tag = body.get("tag") if isinstance(body, dict) else None
        if isinstance(body, str) and (refused := _REFUSED.fullmatch(body)) and refused["service"] == config.entry:
            tag = refused["lane"]  # a strict lane's 503 route matched: it names the lane the filter set
        lane = tag if tag in python else min(python)
        if status == 200 and tag not in python:
            problems.append(f"gateway set lane {tag!r}; the Python engine gives {', '.join(sorted(python))}")
        path = chain_from_reply(config.entry, status, body, config.tag.baggage_key,
                                lambda service: self.expected(service, lane), code)
        problems += chain_problems(path, tag)
        probes = await self.probes(lane)
        problems += [f"probe {p.service} via {p.via}: expected {p.expected or '503'}, got {p.got or p.status}"
                     + (f" with tag header {p.tag!r}" if p.got == p.expected and p.tag != lane else "")
                     for p in probes if not p.ok]
        return VectorResult(vector, python, tag, path, probes, tuple(problems), notes)

    async def learn(self, backends: Backends) -> None:
        """grpcio's own user-agent, from a stub of a gRPC entry (Python must color what it sends)."""
        entry = self.config.service(self.config.entry)
        stub = next((b for b in backends.values() if b.service == entry.name), None)
        if entry.grpc and stub is not None:
            self.agent = await learn_user_agent(stub.port, entry.host, (PROBE_HEADER, "1"))


async def verify(
    config: LaneConfig,
    *,
    vectors: Sequence[Vector] | None = None,
    objects: Sequence[Mapping[str, Any]] | None = None,
    lanes: Mapping[str, frozenset[str]] | None = None,
    calls: Mapping[str, Sequence[str]] | None = None,
    forward: Iterable[str] = (),
    envoy: str | None = None,
    concurrency: int = 8,
) -> list[VectorResult]:
    """Run *vectors* (default: derived from the config) through Envoy configured from *objects*
    (default: rendered from the config), the stubs calling each other along *calls* (default:
    one chain, see `default_calls`) and forwarding as *forward* says (``MODE`` or
    ``SERVICE=MODE`` items, then each vector's own), and compare every hop with Python."""
    present = present_lanes(config, lanes)
    graph: CallGraph = check_calls(config, calls) if calls is not None else default_calls(config)
    objects = list(objects) if objects is not None else render_objects(config, lanes=lanes)
    vectors = list(vectors) if vectors is not None else vectors_for(config)
    defaults = list(forward)
    forwards = [parse_forward(config, [*defaults, *vector.forward]) for vector in vectors]
    subsets = [(svc, lane) for svc in sorted(present) for lane in sorted(present[svc])]
    hosts = {name: svc.host for name, svc in config.services.items()}
    grpc = frozenset(name for name, svc in config.services.items() if svc.grpc)
    egress: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    async with run_backends(subsets, config.tag.header, calls=graph, hosts=hosts, grpc=grpc,
                            egress=egress) as backends:
        bootstrap = envoy_bootstrap(config, objects, backends)
        async with run_envoy(bootstrap, binary=envoy) as running:
            egress.set_result(running.listeners[MESH_LISTENER])
            runner = _Runner(config, present, running.listeners, sidecar_filter_rendered(objects))
            gate = asyncio.Semaphore(max(1, concurrency))

            async def one(vector: Vector, modes: Mapping[str, Forward]) -> VectorResult:
                async with gate:
                    return await runner.run(vector, modes)

            try:
                await runner.learn(backends)
                return list(await asyncio.gather(*(one(v, f) for v, f in zip(vectors, forwards))))
            finally:
                await runner.close()


def format_result(result: VectorResult) -> str:
    """``ok   name: python gray | gateway tag gray | a@gray → b@base → c@gray`` (problems on FAIL
    lines; branches of the call graph as several paths separated by ``;``)."""
    line = (f"{'ok  ' if result.ok else 'FAIL'} {result.vector.name}: python {'|'.join(sorted(result.python))}"
            f" | gateway tag {result.tag or '-'} | {'; '.join(chain_paths(result.path))}")
    baggage_only = sorted({h.service for h in result.hops if h.calls and h.forward == Forward.BAGGAGE.value})
    if baggage_only:
        line += f" | baggage only from {', '.join(baggage_only)}"
    if result.notes:
        line += f" | as gRPC: {'; '.join(result.notes)}"
    return line if result.ok else line + "\n       " + "\n       ".join(result.problems)
