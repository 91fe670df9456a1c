"""Typed shapes of the Istio objects lane emits, and their one conversion to plain data.

Objects are frozen dataclasses named after the Istio API messages they stand for. `to_data`
turns them into the dicts the YAML dump and the Kubernetes API take: field names become the API's
camelCase, and unset fields (None, empty tuples and mappings) are left out rather than emitted as
nulls, so the output only says what lane means. Envoy patch values inside an EnvoyFilter are
``google.protobuf.Struct`` data in Envoy's own snake_case and stay plain mappings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "CONFIG_LABEL",
    "MANAGED_BY_LABEL",
    "NETWORKING_V1",
    "NETWORKING_V1ALPHA3",
    "Destination",
    "DestinationRuleSpec",
    "EnvoyConfigObjectPatch",
    "EnvoyFilterSpec",
    "GatewaySpec",
    "HTTPBody",
    "HTTPDirectResponse",
    "HTTPMatchRequest",
    "HTTPRoute",
    "HTTPRouteDestination",
    "ObjectMeta",
    "Port",
    "PortSelector",
    "Resource",
    "Server",
    "StringMatch",
    "Subset",
    "VirtualServiceSpec",
    "WorkloadSelector",
    "to_data",
]

NETWORKING_V1: Final = "networking.istio.io/v1"
NETWORKING_V1ALPHA3: Final = "networking.istio.io/v1alpha3"  # the only version EnvoyFilter has
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
CONFIG_LABEL: Final = "lane.dev/config"


def _empty_map() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    name: str
    namespace: str
    labels: Mapping[str, str] = field(default_factory=_empty_map)
    annotations: Mapping[str, str] = field(default_factory=_empty_map)


@dataclass(frozen=True, slots=True)
class Resource:
    """One Kubernetes object: ``apiVersion``/``kind``/``metadata``/``spec``."""

    api_version: str
    kind: str
    metadata: ObjectMeta
    spec: Any  # one of the *Spec dataclasses below


@dataclass(frozen=True, slots=True)
class Subset:
    name: str
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class DestinationRuleSpec:
    host: str
    subsets: tuple[Subset, ...] = ()


@dataclass(frozen=True, slots=True)
class StringMatch:
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None


@dataclass(frozen=True, slots=True)
class HTTPMatchRequest:
    name: str | None = None
    headers: Mapping[str, StringMatch] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class PortSelector:
    number: int


@dataclass(frozen=True, slots=True)
class Destination:
    host: str
    subset: str | None = None
    port: PortSelector | None = None


@dataclass(frozen=True, slots=True)
class HTTPRouteDestination:
    destination: Destination


@dataclass(frozen=True, slots=True)
class HTTPBody:
    string: str


@dataclass(frozen=True, slots=True)
class HTTPDirectResponse:
    status: int
    body: HTTPBody | None = None


@dataclass(frozen=True, slots=True)
class HTTPRoute:
    name: str | None = None
    match: tuple[HTTPMatchRequest, ...] = ()
    route: tuple[HTTPRouteDestination, ...] = ()
    direct_response: HTTPDirectResponse | None = None


@dataclass(frozen=True, slots=True)
class VirtualServiceSpec:
    hosts: tuple[str, ...]
    gateways: tuple[str, ...] = ()
    http: tuple[HTTPRoute, ...] = ()


@dataclass(frozen=True, slots=True)
class Port:
    number: int
    name: str
    protocol: str


@dataclass(frozen=True, slots=True)
class Server:
    port: Port
    hosts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GatewaySpec:
    selector: Mapping[str, str]
    servers: tuple[Server, ...]


@dataclass(frozen=True, slots=True)
class WorkloadSelector:
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class EnvoyConfigObjectPatch:
    apply_to: str
    match: Mapping[str, Any]  # EnvoyConfigObjectMatch, already in API spelling
    patch: Mapping[str, Any]  # Patch: operation + value (an Envoy Struct, snake_case)


@dataclass(frozen=True, slots=True)
class EnvoyFilterSpec:
    config_patches: tuple[EnvoyConfigObjectPatch, ...]
    workload_selector: WorkloadSelector | None = None


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def to_data(value: Any) -> Any:
    """*value* as plain YAML/JSON data: dataclasses to camelCase dicts without unset fields."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is None or (isinstance(item, (tuple, Mapping)) and not item):
                continue
            out[_camel(f.name)] = to_data(item)
        return out
    if isinstance(value, Mapping):
        return {str(k): to_data(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [to_data(v) for v in value]
    return value
