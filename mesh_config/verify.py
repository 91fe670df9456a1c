"""`lane mesh verify`: the rendered objects, run in a real Envoy, against the Python data plane.

One Envoy process on loopback plays both Istio roles the rendered objects configure:

* listener ``gateway`` -- the ingress gateway: the gateway EnvoyFilter's Lua *verbatim*, then
  the router with the routes of every VirtualService bound to the Gateway;
* listener ``mesh`` -- sidecar outbound: the sidecar EnvoyFilter's Lua (if rendered), then the
  routes of every VirtualService bound to ``mesh``, one virtual host per service host.

VirtualService routes become Envoy routes one to one (tag header exact match -> cluster
``host|subset``, direct 503 responses as such); every DestinationRule subset becomes a cluster
in front of a stub backend that answers which ``service@lane`` it is and what lane headers it
got. A route naming a subset no DestinationRule defines fails the translation, as it would fail
in Istio (503 "no healthy upstream").

Each vector is checked hop by hop: sent to the gateway, the tag it sets must be a lane the
Python engine gives the request and the entry subset must be `LaneConfig.lane_for` of it; then,
per lane, every service is called through ``mesh`` with the tag header (and, when the sidecar
filter is rendered, with only a baggage member) and must answer from ``lane_for``'s subset.
Apps calling each other are not emulated: a hop's route depends only on the tag it carries.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from lane.baggage import get_member
from lane.config import LaneConfig
from lane.errors import LaneError

from .backends import Backend, run_backends
from .envoy import run_envoy
from .envoy_filter import lua_http_filter, lua_of
from .lanes import Presence, present_lanes
from .render import render_objects
from .vectors import Vector, python_lanes, vectors_for
from .virtual_service import MESH_GATEWAY

__all__ = ["Hop", "VectorResult", "VerifyError", "envoy_bootstrap", "format_result", "verify"]

_HCM_TYPE: Final = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER: Final = {"name": "envoy.filters.http.router",
                  "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
GATEWAY_HOST: Final = "lane-verify.test"
_REFUSED: Final = re.compile(r"no instance of (?P<service>\S+) may serve lane (?P<lane>\S+)\n")


class VerifyError(LaneError):
    """The rendered objects cannot be run as they are (e.g. a route to an undefined subset)."""


@dataclass(frozen=True, slots=True)
class Hop:
    service: str
    expected: str | None  # subset lane_for says; None: 503
    got: str | None  # subset that answered; None: no backend answered
    status: int
    via: str = "tag"  # "tag", "baggage" or "gateway"

    @property
    def ok(self) -> bool:
        if self.expected is None:
            return self.status == 503 and self.got is None
        return self.status == 200 and self.got == self.expected


@dataclass(frozen=True, slots=True)
class VectorResult:
    vector: Vector
    python: frozenset[str]
    tag: str | None  # the lane the gateway filter set
    hops: tuple[Hop, ...]
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


def _cluster(name: str, port: int) -> dict[str, Any]:
    endpoint = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
    return {"name": name, "type": "STATIC", "connect_timeout": "2s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]}}


def _envoy_route(vs: str, http: Mapping[str, Any], clusters: set[str]) -> dict[str, Any]:
    match: dict[str, Any] = {"prefix": "/"}
    matches = http.get("match") or []
    if len(matches) > 1 or any(set(m) - {"headers"} for m in matches):
        raise VerifyError(f"VirtualService/{vs}: only one header match per route is supported by verify")
    for m in matches:
        headers = []
        for name, cond in m["headers"].items():
            if set(cond) != {"exact"}:
                raise VerifyError(f"VirtualService/{vs}: header {name}: only exact matches are supported by verify")
            headers.append({"name": name, "string_match": {"exact": cond["exact"]}})
        match["headers"] = headers
    if "directResponse" in http:
        direct = http["directResponse"]
        body = {"inline_string": direct["body"]["string"]} if "body" in direct else None
        return {"match": match, "direct_response": {"status": direct["status"], **({"body": body} if body else {})}}
    routes = http.get("route") or []
    if len(routes) != 1:
        raise VerifyError(f"VirtualService/{vs}: expected exactly one destination per route")
    dest = routes[0]["destination"]
    cluster = f"{dest['host']}|{dest.get('subset', '')}"
    if cluster not in clusters:
        raise VerifyError(f"VirtualService/{vs}: routes to subset {dest.get('subset')!r} of {dest['host']}, "
                          "which no DestinationRule defines (Istio would answer 503 no healthy upstream)")
    return {"match": match, "route": {"cluster": cluster}}


def _listener(name: str, vhosts: list[dict[str, Any]], lua: str | None) -> dict[str, Any]:
    filters = ([lua_http_filter(f"lane.{name}.lua", lua)] if lua is not None else []) + [_ROUTER]
    hcm = {"@type": _HCM_TYPE, "stat_prefix": name, "http_filters": filters,
           "route_config": {"name": name, "virtual_hosts": vhosts}}
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}


def envoy_bootstrap(config: LaneConfig, objects: Sequence[Mapping[str, Any]],
                    backends: Mapping[tuple[str, str], Backend]) -> dict[str, Any]:
    """An Envoy bootstrap equivalent to *objects* (see the module docstring)."""
    clusters: dict[str, dict[str, Any]] = {}
    lua: dict[str, str] = {}
    for obj in objects:
        if obj["kind"] == "DestinationRule":
            host = obj["spec"]["host"]
            svc = config.service_by_host(host)
            for subset in obj["spec"].get("subsets", []):
                if svc is None or (svc.name, subset["name"]) not in backends:
                    raise VerifyError(f"DestinationRule/{obj['metadata']['name']}: no backend for {host}|{subset['name']}")
                clusters[f"{host}|{subset['name']}"] = _cluster(f"{host}|{subset['name']}",
                                                                backends[(svc.name, subset["name"])].port)
        elif obj["kind"] == "EnvoyFilter":
            lua[obj["spec"]["configPatches"][0]["match"]["context"]] = lua_of(obj)
    vhosts: dict[str, list[dict[str, Any]]] = {"gateway": [], "mesh": []}
    for obj in objects:
        if obj["kind"] != "VirtualService":
            continue
        name, spec = obj["metadata"]["name"], obj["spec"]
        routes = [_envoy_route(name, http, set(clusters)) for http in spec.get("http", [])]
        domains = [d for h in spec["hosts"] for d in ([h] if h == "*" else [h, f"{h}:*"])]
        for gateway in spec.get("gateways", []):
            role = "mesh" if gateway == MESH_GATEWAY else "gateway"
            vhosts[role].append({"name": f"{role}-{name}", "domains": domains, "routes": routes})
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [_listener("gateway", vhosts["gateway"], lua.get("GATEWAY")),
                          _listener("mesh", vhosts["mesh"], lua.get("SIDECAR_OUTBOUND"))],
            "clusters": list(clusters.values()),
        },
    }


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
        self.mesh_hops: dict[str, asyncio.Task[tuple[Hop, ...]]] = {}

    def expected(self, service: str, lane: str) -> str | None:
        return self.config.lane_for(service, lane, lambda s, candidate: candidate in self.present.get(s, frozenset()))

    async def hop(self, service: str, lane: str, via: str) -> Hop:
        svc = self.config.services[service]
        if via == "tag":
            headers = [(self.config.tag.header, lane)]
        else:
            headers = [("baggage", f"other=1,{self.config.tag.baggage_key}={lane}")]
        status, body = await _send(self.ports["mesh"], svc.host, "/", headers)
        got = body.get("lane") if isinstance(body, dict) and body.get("service") == service else None
        return Hop(service, self.expected(service, lane), got, status, via)

    async def _mesh(self, lane: str) -> tuple[Hop, ...]:
        vias = ("tag", "baggage") if self.sidecar else ("tag",)
        return tuple([await self.hop(s, lane, via) for s in sorted(self.config.services) for via in vias])

    def mesh(self, lane: str) -> asyncio.Task[tuple[Hop, ...]]:
        if lane not in self.mesh_hops:
            self.mesh_hops[lane] = asyncio.ensure_future(self._mesh(lane))
        return self.mesh_hops[lane]

    async def run(self, vector: Vector) -> VectorResult:
        config = self.config
        python = python_lanes(config.rules, vector.view(self.gateway_host), config.default_lane)
        status, body = await _send(self.ports["gateway"], self.gateway_host, vector.target, vector.headers)
        problems: list[str] = []
        tag = body.get("tag") if isinstance(body, dict) else None
        if isinstance(body, str) and (refused := _REFUSED.fullmatch(body)) and refused["service"] == config.entry:
            tag = refused["lane"]  # a strict lane's 503 route matched: it names the lane the filter set
        lane = tag if tag in python else min(python)
        if status == 200 and tag not in python:
            problems.append(f"gateway set lane {tag!r}; the Python engine gives {', '.join(sorted(python))}")
        if isinstance(body, dict) and tag is not None:
            carried = get_member([body.get("baggage") or ""], config.tag.baggage_key)
            if carried != tag:
                problems.append(f"baggage carries lane {carried!r}, the tag header {tag!r}")
        got = body.get("lane") if isinstance(body, dict) and body.get("service") == config.entry else None
        entry = Hop(config.entry, self.expected(config.entry, lane), got, status, "gateway")
        hops = (entry, *await self.mesh(lane))
        problems += [f"{h.service} via {h.via}: expected {h.expected or '503'}, got {h.got or h.status}"
                     for h in hops if not h.ok]
        return VectorResult(vector, python, tag, hops, tuple(problems))


async def verify(
    config: LaneConfig,
    *,
    vectors: Sequence[Vector] | None = None,
    objects: Sequence[Mapping[str, Any]] | None = None,
    lanes: Mapping[str, frozenset[str]] | None = None,
    envoy: str | None = None,
    concurrency: int = 8,
) -> list[VectorResult]:
    """Run *vectors* (default: derived from the config) through Envoy configured from *objects*
    (default: rendered from the config) and compare with the Python engine, hop by hop."""
    present = present_lanes(config, lanes)
    objects = list(objects) if objects is not None else render_objects(config, lanes=lanes)
    vectors = list(vectors) if vectors is not None else vectors_for(config)
    subsets = [(svc, lane) for svc in sorted(present) for lane in sorted(present[svc])]
    async with run_backends(subsets, config.tag.header) as backends:
        bootstrap = envoy_bootstrap(config, objects, backends)
        sidecar = any(o["kind"] == "EnvoyFilter" and o["spec"]["configPatches"][0]["match"]["context"]
                      == "SIDECAR_OUTBOUND" for o in objects)
        async with run_envoy(bootstrap, binary=envoy) as running:
            runner = _Runner(config, present, running.listeners, sidecar)
            gate = asyncio.Semaphore(max(1, concurrency))

            async def one(vector: Vector) -> VectorResult:
                async with gate:
                    return await runner.run(vector)

            return list(await asyncio.gather(*(one(v) for v in vectors)))


def format_result(result: VectorResult) -> str:
    """``ok   name: python gray | gateway tag gray | a@gray b@base ...`` (problems on FAIL lines)."""
    path = " ".join(f"{h.service}@{h.got or h.status}" for h in result.hops if h.via in ("gateway", "tag")
                    and (h.via == "gateway" or h.service != result.hops[0].service))
    line = (f"{'ok  ' if result.ok else 'FAIL'} {result.vector.name}: python {'|'.join(sorted(result.python))}"
            f" | gateway tag {result.tag or '-'} | {path}")
    return line if result.ok else line + "\n       " + "\n       ".join(result.problems)
