"""Prometheus metrics of the data plane (served on the admin listener's ``/metrics``).

Label values are bounded: lanes the config does not declare are reported as ``undeclared`` (a
client can invent any DNS label), services not in the config as ``unknown``. The invalid-tag
counter lives in `lane.tags` (``lane_invalid_tags_total``) and is exported by the same registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from prometheus_client import Counter, Gauge

from .config import Endpoint, LaneConfig

__all__ = [
    "EJECTIONS",
    "FORBIDDEN",
    "IN_FLIGHT",
    "REJECTED_TAGS",
    "RELOADS",
    "REQUESTS",
    "ejection_hook",
    "lane_label",
    "observe_request",
]

REQUESTS: Final = Counter(
    "lane_requests",
    "Requests forwarded by a lane proxy, by service, requested lane, served lane, fallback reason and status.",
    ["proxy", "service", "requested_lane", "served_lane", "fallback", "status"],
)
REJECTED_TAGS: Final = Counter(
    "lane_rejected_tags",
    "Lane tags sent by untrusted clients and removed by the gateway, by where they were found.",
    ["source"],
)
EJECTIONS: Final = Counter(
    "lane_ejections",
    "Instances ejected by passive health checking.",
    ["service", "lane", "instance"],
)
FORBIDDEN: Final = Counter(
    "lane_forbidden",
    "Outbound requests refused by a sidecar because the host is not a service in the config.",
)
RELOADS: Final = Counter("lane_config_reloads", "Config reloads, by result.", ["result"])
IN_FLIGHT: Final = Gauge("lane_in_flight_requests", "Requests being forwarded right now.", ["proxy"])


def lane_label(config: LaneConfig, lane: str | None) -> str:
    if lane is None:
        return ""
    return lane if lane in config.lanes else "undeclared"


def observe_request(
    config: LaneConfig, proxy: str, service: str | None, requested: str | None, served: str | None,
    fallback: str | None, status: int,
) -> None:
    REQUESTS.labels(
        proxy=proxy,
        service=service if service in config.services else "unknown",
        requested_lane=lane_label(config, requested),
        served_lane=lane_label(config, served),
        fallback=fallback or "",
        status=str(status),
    ).inc()


def ejection_hook(config_of: Callable[[], LaneConfig]) -> Callable[[Endpoint], None]:
    """An `on_eject` callback for `PassiveHealth` that counts ejections by service and lane."""

    def hook(endpoint: Endpoint) -> None:
        config = config_of()
        for svc in config.services.values():
            for lane, endpoints in svc.instances.items():
                if endpoint in endpoints:
                    EJECTIONS.labels(service=svc.name, lane=lane, instance=str(endpoint)).inc()
                    return
        EJECTIONS.labels(service="unknown", lane="", instance=str(endpoint)).inc()

    return hook
