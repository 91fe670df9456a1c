"""What the load test knows about live instance health, and when it knew it.

Health changes race with requests: a proxy may fall back a moment before the admin endpoint we
poll shows the lane unhealthy, or a moment after it recovered. So we keep, per (service, lane),
the time intervals during which some source saw the lane without a usable instance, and accept a
health fallback when such an interval lies within a grace period of the request.

Sources are the data plane's ``GET /lane/instances`` views (passive health / ejections), the
demo's ``GET /demo/topology`` (instances stopped on purpose) and the chaos driver itself. Pure:
the caller supplies documents and timestamps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = ["HealthHistory", "LaneKey", "combine", "parse_instances", "parse_topology"]

LaneKey = tuple[str, str]  # (service, lane)
_MAX_INTERVALS: Final = 1000


def _fail(what: str, doc: Any) -> ValueError:
    return ValueError(f"{what}: unexpected shape {str(doc)[:120]!r}")


def parse_instances(doc: Any) -> dict[LaneKey, bool]:
    """``GET /lane/instances`` → (service, lane) → whether any instance is healthy.

    Shape: ``{"services": {svc: {lane: [{"instance": "host:port", "healthy": bool}, ...]}}}``.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise _fail("/lane/instances", doc)
    out: dict[LaneKey, bool] = {}
    for service, lanes in doc["services"].items():
        if not isinstance(lanes, dict):
            raise _fail(f"/lane/instances services.{service}", lanes)
        for lane, instances in lanes.items():
            if not isinstance(instances, list):
                raise _fail(f"/lane/instances services.{service}.{lane}", instances)
            out[(str(service), str(lane))] = any(
                isinstance(i, dict) and i.get("healthy", True) is not False for i in instances
            )
    return out


def _up(item: Any) -> bool:
    if isinstance(item, dict):
        return bool(item.get("up", item.get("healthy", True)))
    return True


def parse_topology(doc: Any) -> dict[LaneKey, bool]:
    """The demo's ``GET /demo/topology`` → (service, lane) → whether any instance process is up.

    ``instances`` maps service → lane → a list of addresses or of ``{"up": bool, ...}`` objects;
    an optional parallel ``up`` mapping (service → lane → bool or list of bool) also counts.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("instances"), dict):
        raise _fail("/demo/topology", doc)
    out: dict[LaneKey, bool] = {}
    for service, lanes in doc["instances"].items():
        if not isinstance(lanes, dict):
            raise _fail(f"/demo/topology instances.{service}", lanes)
        for lane, items in lanes.items():
            items = items if isinstance(items, list) else [items]
            out[(str(service), str(lane))] = any(_up(i) for i in items) if items else False
    ups = doc.get("up")
    if isinstance(ups, dict):
        for service, lanes in ups.items():
            if isinstance(lanes, dict):
                for lane, flag in lanes.items():
                    flags = flag if isinstance(flag, list) else [flag]
                    key = (str(service), str(lane))
                    out[key] = out.get(key, True) and any(bool(f) for f in flags)
    return out


def combine(views: list[dict[LaneKey, bool]]) -> dict[LaneKey, bool]:
    """One view from several proxies: a lane counts as unhealthy when any of them sees it so.

    Passive health is per proxy, and we cannot tell which proxy made a given hop's decision, so a
    fallback is justified if any proxy had reason to make it.
    """
    out: dict[LaneKey, bool] = {}
    for view in views:
        for key, healthy in view.items():
            out[key] = out.get(key, True) and healthy
    return out


class HealthHistory:
    """Per (service, lane): the intervals during which some source saw it unhealthy."""

    def __init__(self) -> None:
        self._intervals: dict[tuple[str, LaneKey], list[list[float]]] = {}
        self._open: set[tuple[str, LaneKey]] = set()
        self._known: set[LaneKey] = set()

    def observe(self, source: str, when: float, view: Mapping[LaneKey, bool]) -> None:
        """Record one poll of *source*: every lane it lists, healthy or not, at time *when*."""
        for key, healthy in view.items():
            self._known.add(key)
            self._set(source, key, when, healthy)

    def mark(self, source: str, key: LaneKey, when: float, healthy: bool) -> None:
        """Record direct knowledge (the chaos driver stopping or restarting an instance)."""
        self._set(source, key, when, healthy)

    def _set(self, source: str, key: LaneKey, when: float, healthy: bool) -> None:
        slot = (source, key)
        spans = self._intervals.setdefault(slot, [])
        if not healthy:
            if slot in self._open:
                spans[-1][1] = max(spans[-1][1], when)
            else:
                spans.append([when, when])
                self._open.add(slot)
                del spans[:-_MAX_INTERVALS]
        elif slot in self._open:
            spans[-1][1] = max(spans[-1][1], when)
            self._open.discard(slot)

    def unhealthy_near(self, key: LaneKey, start: float, end: float, grace: float) -> bool:
        """Whether some source saw *key* unhealthy within *grace* seconds of [start, end]."""
        for slot, spans in self._intervals.items():
            if slot[1] != key:
                continue
            for i in range(len(spans) - 1, -1, -1):
                lo, hi = spans[i]
                if i == len(spans) - 1 and slot in self._open:
                    hi = float("inf")  # still unhealthy as far as this source knows
                if hi < start - grace:
                    break  # spans are in time order: every earlier one ended earlier still
                if lo <= end + grace:
                    return True
        return False

    def known_lanes(self, service: str) -> set[str]:
        """Lanes of *service* that some source has reported instances for."""
        return {lane for svc, lane in self._known if svc == service}

    def unhealthy_now(self) -> list[LaneKey]:
        return sorted({key for _, key in self._open})
