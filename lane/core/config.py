"""The lane config model: frozen dataclasses, built once by `lane.core.config_load` from one YAML file.

Raw dicts never travel past the loader; everything downstream reads these objects. `LIMITS` is the
range of every number a config may hold (the loader enforces it, `lane schema` publishes it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from lane.core.endpoint import Endpoint
from lane.core.errors import ConfigError
from lane.core.rules import Rule
from lane.core.tags import TagSpec

__all__ = [
    "DEFAULT_PROTOCOL",
    "DEFAULT_TRACE_HEADERS",
    "LIMITS",
    "PROTOCOLS",
    "Lane",
    "LaneConfig",
    "MeshGatewaySpec",
    "MeshSpec",
    "ProxySpec",
    "Service",
]

# What a service speaks, named as Istio names a Kubernetes Service port's protocol (``appProtocol`` or
# the port name's prefix): ``http`` (HTTP/1.1) or ``grpc`` (gRPC, i.e. HTTP/2 end to end). Istio sends
# HTTP/2 to a ``grpc`` port's pods and HTTP/1.1 to an ``http`` port's, so a gRPC service must say so.
PROTOCOLS: Final[tuple[str, ...]] = ("http", "grpc")  # the first is the default
DEFAULT_PROTOCOL: Final = PROTOCOLS[0]
DEFAULT_TRACE_HEADERS: Final[tuple[str, ...]] = (
    "traceparent", "x-request-id", "x-b3-traceid", "b3", "uber-trace-id", "sw8")
# The range of every number in a config, by key: the parser enforces it and `lane schema` publishes it,
# so an editor flags what `lane check` would refuse. A number is an integer where its default is one.
LIMITS: Final[Mapping[str, tuple[float, float]]] = MappingProxyType({
    "proxy.connect_timeout": (0.001, 600),
    "proxy.request_timeout": (0.001, 86400),
    "proxy.deadline_margin": (0.0, 60),
    "proxy.retries": (0, 10),
    "proxy.eject_after_failures": (1, 1000),
    "proxy.eject_seconds": (0.01, 3600),
    "proxy.trace_cache_size": (1, 10_000_000),
    "proxy.trace_cache_ttl": (0.01, 86400),
    "proxy.max_websocket_message": (1, 1 << 30),
    "proxy.max_connections": (1, 1_000_000),
    "proxy.max_concurrent_requests": (1, 1_000_000),
    "proxy.connection_buffer_bytes": (4096, 64 * 1024 * 1024),
    "proxy.memory_watermark_mb": (0, 1 << 20),
    "services.port": (1, 65535),
    "mesh.gateway.port": (1, 65535),
    "coloring.percentage.percent": (0, 100),
})


@dataclass(frozen=True, slots=True)
class Lane:
    name: str
    fallback: str | None  # the next lane to try; None only for the default lane
    strict: bool = False  # strict lanes never fall back: 503 instead


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    host: str  # the name other services use to reach it (Kubernetes Service / Host header)
    port: int
    instances: Mapping[str, tuple[Endpoint, ...]]  # lane -> static endpoints; key present = lane exists
    selector: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    protocol: str = DEFAULT_PROTOCOL  # one of PROTOCOLS

    @property
    def grpc(self) -> bool:
        return self.protocol == "grpc"

    @property
    def lanes(self) -> tuple[str, ...]:
        return tuple(self.instances)

    def has_lane(self, lane: str) -> bool:
        return lane in self.instances


@dataclass(frozen=True, slots=True)
class ProxySpec:
    """Data-plane tuning shared by the gateway and every sidecar."""

    connect_timeout: float = 2.0
    request_timeout: float = 30.0
    # Taken off the budget each hop passes on (`lane.core.deadline`), so an inner hop answers first.
    deadline_margin: float = 0.25
    retries: int = 1
    eject_after_failures: int = 3
    eject_seconds: float = 5.0
    trace_headers: tuple[str, ...] = DEFAULT_TRACE_HEADERS
    trace_cache_size: int = 10_000
    trace_cache_ttl: float = 60.0
    trusted_cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # Largest WebSocket message a proxy relays (bytes, aiohttp's default); a bigger one closes with 1009.
    max_websocket_message: int = 4 * 1024 * 1024
    # Overload protection of each data listener (`lane.engine.limits`): client connections, requests being
    # answered at once (over it: 503 + Retry-After), bytes buffered per connection each way, and the
    # resident memory above which new requests are shed (0: not watched).
    max_connections: int = 10_000
    max_concurrent_requests: int = 1_000
    connection_buffer_bytes: int = 256 * 1024
    memory_watermark_mb: int = 0


@dataclass(frozen=True, slots=True)
class MeshGatewaySpec:
    name: str = "lane-gateway"
    hosts: tuple[str, ...] = ("*",)
    port: int = 80
    selector: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({"istio": "ingressgateway"}))
    # Where the gateway's EnvoyFilter goes: an EnvoyFilter with a workloadSelector only reaches pods in
    # its own namespace, or everywhere from the Istio root namespace (the default, istio-system).
    namespace: str = "istio-system"


@dataclass(frozen=True, slots=True)
class MeshSpec:
    namespace: str = "default"
    gateway: MeshGatewaySpec = field(default_factory=MeshGatewaySpec)
    baggage_to_header: bool = True  # emit the sidecar EnvoyFilter copying the lane from baggage
    # emit Envoy aggregate clusters (EnvoyFilter) so a lane whose pods die falls back at once;
    # off for meshes that do not allow EnvoyFilters (then only `lane mesh sync` repairs routes)
    instant_fallback: bool = True


@dataclass(frozen=True, slots=True)
class LaneConfig:
    source: str
    tag: TagSpec
    label_key: str
    lanes: Mapping[str, Lane]  # includes the default lane
    rules: tuple[Rule, ...]
    services: Mapping[str, Service]
    entry: str
    proxy: ProxySpec
    mesh: MeshSpec

    @property
    def default_lane(self) -> str:
        return self.tag.default_lane

    def chain(self, lane: str) -> tuple[str, ...]:
        """*lane* followed by its fallbacks, ending at the default lane (unknown lanes: just the default)."""
        if lane not in self.lanes:
            return (self.default_lane,)
        out = [lane]
        nxt = self.lanes[lane].fallback
        while nxt is not None:
            out.append(nxt)
            nxt = self.lanes[nxt].fallback
        return tuple(out)

    def lane_for(
        self, service: str, lane: str, has: Callable[[str, str], bool] | None = None
    ) -> str | None:
        """The lane of *service* that serves a request in *lane*, or None (503).

        Walks *lane*'s fallback chain and returns the first lane the service has; *has(service,
        lane)* says whether it has one right now (default: the static config, i.e. the lane is
        listed under the service). A strict lane never falls back. This is the one definition of
        "where does a lane go" that the data plane, the mesh emitter and the load test share.
        """
        present = has or (lambda s, candidate: self.services[s].has_lane(candidate))
        if service not in self.services:
            return None
        chain = self.chain(lane)
        if self.lanes.get(chain[0]) is not None and self.lanes[chain[0]].strict:
            chain = chain[:1]
        for candidate in chain:
            if present(service, candidate):
                return candidate
        return None

    def service(self, name: str) -> Service:
        try:
            return self.services[name]
        except KeyError:
            raise ConfigError(self.source, f"services.{name}", "no such service in the config") from None

    def service_by_host(self, host: str) -> Service | None:
        """The service reached as *host* (its name, its host, or either with a port)."""
        bare = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        bare = bare.lower().rstrip(".")
        for svc in self.services.values():
            if bare in (svc.name, svc.host.lower()):
                return svc
        return None
