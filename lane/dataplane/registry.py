"""The proxy's view of the world: the current config, service -> lane -> instances, and their health.

One `Registry` per proxy process. The config is swapped atomically on reload: a request takes
`registry.config` once when it starts and routes on that snapshot until it ends, so in-flight
requests finish on the config they began with. Health state survives reloads for instances that
are still configured.

`route` is what every request asks: the routing decision on its snapshot and the health view. In
the common case (nothing ejected, nothing failed during the request, a declared lane) the answer
depends on the config alone, so it is computed once per config and kept until the next swap.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection
from typing import Any

from lane.core.config import LaneConfig
from lane.core.endpoint import Endpoint
from lane.core.routing import Available, Route, choose_upstream
from lane.dataplane.health import PassiveHealth

__all__ = ["Registry"]


class Registry:
    def __init__(self, config: LaneConfig, *, on_eject: Callable[[Endpoint], None] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        kwargs: dict[str, Any] = {"on_eject": on_eject}
        if clock is not None:
            kwargs["clock"] = clock
        self.health = PassiveHealth(config.proxy.eject_after_failures, config.proxy.eject_seconds, **kwargs)
        self._config = config
        self._turn = itertools.count()
        self._routes: dict[tuple[str, str], Route] = {}  # (service, declared lane) -> route, current config

    @property
    def config(self) -> LaneConfig:
        return self._config

    def swap(self, config: LaneConfig) -> LaneConfig:
        """Install *config* for new requests; returns the previous one."""
        old, self._config = self._config, config
        self._routes = {}
        self.health.configure(config.proxy.eject_after_failures, config.proxy.eject_seconds)
        self.health.forget_except({e for s in config.services.values() for eps in s.instances.values() for e in eps})
        return old

    def available_in(self, config: LaneConfig) -> Available:
        """The health view for routing on *config* (a request's snapshot)."""

        def available(service: str, lane: str) -> tuple[Endpoint, ...]:
            svc = config.services.get(service)
            if svc is None:
                return ()
            return tuple(e for e in svc.instances.get(lane, ()) if self.health.is_available(e))

        return available

    def route(self, config: LaneConfig, service: str, lane: str, failed: Collection[Endpoint] = ()) -> Route:
        """`choose_upstream` for a request on *config* (its snapshot) with the current health view.

        Raises `UpstreamUnavailable` like `choose_upstream`. Cached while every instance counts
        as available, for the lanes the config declares (a client can invent any number of others).
        """
        cacheable = not failed and config is self._config and lane in config.lanes and not self.health.any_ejected()
        if not cacheable:
            return choose_upstream(config, service, lane, self.available_in(config), failed)
        key = (service, lane)
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = choose_upstream(config, service, lane)
        return route

    def pick(self, upstreams: tuple[Endpoint, ...]) -> Endpoint:
        """Round-robin over *upstreams* (non-empty)."""
        return upstreams[next(self._turn) % len(upstreams)]

    def view(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """``/lane/instances``: service -> lane -> [{instance, healthy, ...}] of the current config."""
        out: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for svc in self._config.services.values():
            lanes: dict[str, list[dict[str, Any]]] = {}
            for lane, endpoints in svc.instances.items():
                rows = []
                for endpoint in endpoints:
                    snap = self.health.snapshot(endpoint)
                    rows.append({"instance": str(endpoint), "healthy": snap.healthy,
                                 "consecutive_failures": snap.consecutive_failures, "ejected_for": snap.ejected_for})
                lanes[lane] = rows
            out[svc.name] = lanes
        return out
