"""Which lanes each service has right now, and where each lane of the config goes in it.

The config lists each service's lanes (``services.X.instances``); `lane mesh sync` knows better
(the lanes with ready pods) and passes them in. Every emitted route is then decided by
`LaneConfig.lane_for` -- the one definition of "which lane serves a request" that the data
plane and the load test share -- so a VirtualService never names a subset without instances.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from lane.core.config import LaneConfig

__all__ = ["LaneTarget", "Presence", "default_target", "lane_targets", "present_lanes"]

Presence = Mapping[str, frozenset[str]]


@dataclass(frozen=True, slots=True)
class LaneTarget:
    """Requests tagged *lane* go to subset *subset* of the service; None means 503 (no subset may serve)."""

    lane: str
    subset: str | None

    @property
    def fell_back(self) -> bool:
        return self.subset is not None and self.subset != self.lane


def present_lanes(config: LaneConfig, lanes: Presence | None = None) -> Presence:
    """The declared lanes each service has: *lanes* where given (per service), else the config's.

    Lanes the config does not declare are ignored (no route can ask for them); a service *lanes*
    names that the config does not have is an error, not a silent no-op.
    """
    overrides = dict(lanes or {})
    unknown = sorted(set(overrides) - set(config.services))
    if unknown:
        raise ValueError(f"lanes given for services not in the config: {', '.join(unknown)}")
    out = {}
    for name, svc in config.services.items():
        have = overrides[name] if name in overrides else frozenset(svc.lanes)
        out[name] = frozenset(lane for lane in have if lane in config.lanes)
    return MappingProxyType(out)


def lane_targets(config: LaneConfig, service: str, present: Presence) -> tuple[LaneTarget, ...]:
    """For every non-default lane of the config (config order): the subset that serves it."""
    def has(svc: str, lane: str) -> bool:
        return lane in present.get(svc, frozenset())

    return tuple(
        LaneTarget(lane, config.lane_for(service, lane, has))
        for lane in config.lanes
        if lane != config.default_lane
    )


def default_target(config: LaneConfig, service: str, present: Presence) -> LaneTarget:
    """Where requests without a (known) lane go: the default lane, if the service has it."""
    return LaneTarget(config.default_lane, config.lane_for(service, config.default_lane,
                                                           lambda s, lane: lane in present.get(s, frozenset())))
