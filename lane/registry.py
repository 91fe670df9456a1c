"""The proxy's view of the world: the current config, service -> lane -> instances, and their health.

One `Registry` per proxy process. The config is swapped atomically on reload: a request takes
`registry.config` once when it starts and routes on that snapshot until it ends, so in-flight
requests finish on the config they began with. Health state survives reloads for instances that
are still configured.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from .config import Endpoint, LaneConfig
from .health import PassiveHealth
from .routing import Available

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

    @property
    def config(self) -> LaneConfig:
        return self._config

    def swap(self, config: LaneConfig) -> LaneConfig:
        """Install *config* for new requests; returns the previous one."""
        old, self._config = self._config, config
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
