"""DestinationRule per service: one subset per lane the service has, selected by the lane label.

It goes into the service's own namespace (`mesh_config.hosts`): Istio looks a DestinationRule up
only in the client's namespace, the service's and the root namespace, so that is the one place
every client finds it. A service some lane instantly falls back in gets outlier detection
(`mesh_config.fallback`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from lane.core.config import LaneConfig

from .fallback import Fallback, fallbacks, traffic_policy
from .hosts import service_namespace
from .lanes import Presence
from .model import NETWORKING_V1, DestinationRuleSpec, ObjectMeta, Resource, Subset

__all__ = ["destination_rule"]


def destination_rule(
    config: LaneConfig, service: str, present: Presence, namespace: str, labels: Mapping[str, str],
    falls: tuple[Fallback, ...] | None = None,
) -> Resource:
    """The DestinationRule of *service*: subsets in the config's lane order, e.g. ``version: gray``."""
    svc = config.service(service)
    have = present.get(service, frozenset())
    subsets = tuple(
        Subset(name=lane, labels=MappingProxyType({config.label_key: lane})) for lane in config.lanes if lane in have
    )
    return Resource(
        api_version=NETWORKING_V1,
        kind="DestinationRule",
        metadata=ObjectMeta(name=service, namespace=service_namespace(svc, namespace), labels=labels),
        spec=DestinationRuleSpec(host=svc.host, subsets=subsets,
                                 traffic_policy=traffic_policy(bool(
                                     falls if falls is not None else fallbacks(config, service, present, namespace)))),
    )
