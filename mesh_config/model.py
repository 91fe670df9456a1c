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
    "HTTPRetry",
    "HTTPRoute",
    "HTTPRouteDestination",
    "ObjectMeta",
    "OutlierDetection",
    "Port",
    "PortSelector",
    "Resource",
    "Server",
    "StringMatch",
    "Subset",
    "TrafficPolicy",
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
class OutlierDetection:
    consecutive_gateway_errors: int
    interval: str  # a protobuf Duration: "1s"
    base_ejection_time: str
    max_ejection_percent: int


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    outlier_detection: OutlierDetection | None = None


@dataclass(frozen=True, slots=True)
class DestinationRuleSpec:
    host: str
    traffic_policy: TrafficPolicy | None = None
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
class HTTPRetry:
    attempts: int
    retry_on: str


@dataclass(frozen=True, slots=True)
class HTTPRoute:
    name: str | None = None
    match: tuple[HTTPMatchRequest, ...] = ()
    route: tuple[HTTPRouteDestination, ...] = ()
    retries: HTTPRetry | None = None
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


# class -> ((attribute, API name), ...) of a dataclass; None for any other class. Filled on first
# use: `to_data` runs once per node of every rendered object (~100k for 1,000 services), and
# `dataclasses.fields` plus the camelCase spelling per node were most of `lane mesh render`'s
# object-building time.
_FIELDS: dict[type, tuple[tuple[str, str], ...] | None] = {}
_SCALARS: Final = frozenset({str, int, bool, float, type(None)})


def _fields(cls: type) -> tuple[tuple[str, str], ...] | None:
    try:
        return _FIELDS[cls]
    except KeyError:
        spelled = tuple((f.name, _camel(f.name)) for f in dataclasses.fields(cls)) \
            if dataclasses.is_dataclass(cls) else None
        _FIELDS[cls] = spelled
        return spelled


def to_data(value: Any) -> Any:
    """*value* as plain YAML/JSON data: dataclasses to camelCase dicts without unset fields.

    Every dict and list returned is new, even for a mapping shared by several objects (the labels):
    YAML would otherwise write anchors and aliases for objects it meets twice.
    """
    cls = type(value)
    if cls in _SCALARS:
        return value
    spelled = _fields(cls)
    if spelled is not None:
        out: dict[str, Any] = {}
        for name, api_name in spelled:
            item = getattr(value, name)
            if item is None or (not item and isinstance(item, (tuple, Mapping))):
                continue
            out[api_name] = to_data(item)
        return out
    if cls is dict or cls is MappingProxyType or isinstance(value, Mapping):
        return {str(k): to_data(v) for k, v in value.items()}
    if cls is tuple or cls is list or isinstance(value, (tuple, list)):
        return [to_data(v) for v in value]
    return value
