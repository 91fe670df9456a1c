"""DestinationRule per service: one subset per lane the service has, selected by the lane label."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from lane.config import LaneConfig

from .lanes import Presence
from .model import NETWORKING_V1, DestinationRuleSpec, ObjectMeta, Resource, Subset

__all__ = ["destination_rule"]


def destination_rule(
    config: LaneConfig, service: str, present: Presence, namespace: str, labels: Mapping[str, str]
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
        metadata=ObjectMeta(name=service, namespace=namespace, labels=labels),
        spec=DestinationRuleSpec(host=svc.host, subsets=subsets),
    )
