"""The Propagation part of the summary: which app breaks the lanes, in plain words.

Every sidecar counts, for each outbound call of its app, which lane carriers the app forwarded and
how the lane was found (`lane.sidecar.carriers`, ``GET /lane/carriers``: one view, or the demo admin's
list of per-service views). At the end of a run the master (or local runner) reads them from each
``--admin`` URL and sums them per service (`lane.sidecar.carriers.sum_views`), so the summary can say
"service d's app drops baggage and traceparent; it forwards only x-request-id — 120 calls, lane
recovered from x-request-id". Calls whose lane was lost left in the default lane: they are counted
as propagation breaks and reported, not failed on: a lost lane that made a request leave its lane
is already judged by the routing checks.

An admin without the endpoint (the gateway's: 404) is skipped quietly; an unreachable one or a
malformed answer gets one log line. Standard library only, like `loadtest.watch`.
"""

from __future__ import annotations

import dataclasses
import logging
import urllib.error
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lane.sidecar.carriers import LaneSource, sum_views

from .watch import fetch_json

__all__ = ["Propagation", "ServicePropagation", "fetch_views", "gather", "propagation_of"]

log = logging.getLogger(__name__)

_NO_CALL_SUFFIX = ": its calls leave in the default lane"  # `describe`'s words for an app forwarding nothing


@dataclass(frozen=True, slots=True)
class ServicePropagation:
    """One service's app: what it forwards of the lane's carriers and how its calls' lanes were found."""

    service: str
    calls: int
    carriers: tuple[str, ...]  # as the sidecars list them: tag header, baggage, then the trace headers
    forwarded: tuple[str, ...]
    sometimes: tuple[str, ...]
    dropped: tuple[str, ...]
    sources: Mapping[str, int]  # LaneSource value -> calls
    verdict: str
    recovered_from: Mapping[str, int] = dataclasses.field(default_factory=dict)  # trace header -> calls

    @property
    def breaks(self) -> int:
        """Calls whose lane the app lost: they left in the default lane."""
        return self.sources.get(LaneSource.LOST.value, 0)

    @property
    def breaks_lanes(self) -> bool:
        """Whether this app is worth a line: it drops a carrier, or some of its calls lost the lane."""
        return bool(self.calls and (self.dropped or self.sometimes or self.breaks))

    def _recovered_from(self) -> str:
        if self.recovered_from:  # counted by the sidecars, most used first
            ranked = sorted(self.recovered_from.items(), key=lambda item: -item[1])
            return " or ".join(name for name, _ in ranked)
        kept = [c for c in self.carriers[2:] if c in self.forwarded or c in self.sometimes]  # older sidecars
        return " or ".join(kept) if kept else "a trace id"

    def how(self) -> str:
        """How the calls' lanes were found, e.g. "120 calls, lane recovered from x-request-id"."""
        words = {
            LaneSource.HEADER.value: "lane carried by the tag header",
            LaneSource.BAGGAGE.value: "lane carried by baggage",
            LaneSource.RECOVERED.value: f"lane recovered from {self._recovered_from()}",
            LaneSource.LOST.value: "left in the default lane",
        }
        seen = [(words[s.value], self.sources.get(s.value, 0)) for s in LaneSource if self.sources.get(s.value, 0)]
        if not seen:
            return f"{self.calls} calls"
        if len(seen) == 1:
            sep = " " if seen[0][0].startswith("left") else ", "
            return f"{self.calls} calls{sep}{seen[0][0]}"
        return f"{self.calls} calls: " + ", ".join(f"{what} ({n})" for what, n in seen)

    def line(self) -> str:
        """The verdict and how the lanes were found, in one sentence."""
        return f"{self.verdict.removesuffix(_NO_CALL_SUFFIX)} — {self.how()}"

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service, "calls": self.calls, "forwarded": list(self.forwarded),
            "sometimes": list(self.sometimes), "dropped": list(self.dropped), "lane_sources": dict(self.sources),
            "breaks": self.breaks, "verdict": self.verdict, "line": self.line(),
        }


@dataclass(frozen=True, slots=True)
class Propagation:
    """Every service the sidecars reported on; `services` in the order they were first seen."""

    services: tuple[ServicePropagation, ...]

    @property
    def breaks(self) -> int:
        return sum(s.breaks for s in self.services)

    def lines(self) -> list[str]:
        """The text part: one line per app that drops carriers, then the others and the breaks."""
        out = [s.line() for s in self.services if s.breaks_lanes]
        whole = [s.service for s in self.services if s.calls and not s.breaks_lanes]
        if whole:
            out.append(f"{', '.join(whole)}: {'app forwards' if len(whole) == 1 else 'apps forward'} "
                       "every lane carrier")
        idle = [s.service for s in self.services if not s.calls]
        if idle:
            out.append(f"no outbound call seen from {', '.join(idle)}")
        broken = [s for s in self.services if s.breaks]
        if broken:
            out.append(f"Propagation breaks: {self.breaks} calls left in the default lane ("
                       + ", ".join(f"service {s.service} {s.breaks}" for s in broken)
                       + "); reported, not failed on: a request that left its lane is a wrong lane above")
        else:
            out.append("Propagation breaks: none")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"breaks": self.breaks, "services": [s.to_json() for s in self.services]}


def _valid(view: Any) -> bool:
    def counts(value: Any) -> bool:
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(n, int) and not isinstance(n, bool) and n >= 0 for k, n in value.items())

    return (isinstance(view, dict) and isinstance(view.get("service"), str) and isinstance(view.get("calls"), int)
            and not isinstance(view.get("calls"), bool) and view["calls"] >= 0
            and counts(view.get("carriers")) and counts(view.get("lane_sources")))


def propagation_of(views: Sequence[Mapping[str, Any]]) -> Propagation:
    """The per-service part of *views* (sidecar views, or the demo's already summed ones)."""
    services = []
    for view in sum_views(views):
        services.append(ServicePropagation(
            view["service"], view["calls"], tuple(view["carriers"]), tuple(view["forwarded"]),
            tuple(view["sometimes"]), tuple(view["dropped"]), dict(view["lane_sources"]), view["verdict"],
            dict(view.get("recovered_from", {})),
        ))
    return Propagation(tuple(services))


def fetch_views(admin: str, fetch: Callable[[str], Any] = fetch_json) -> list[dict[str, Any]]:
    """The ``/lane/carriers`` views of one admin URL: [] when it has none (404), is down or answers nonsense."""
    url = admin.rstrip("/") + "/lane/carriers"
    try:
        body = fetch(url)
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            log.warning("cannot read %s: HTTP %s", url, exc.code)
        return []
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", url, exc)
        return []
    views = body if isinstance(body, list) else [body]
    if not all(_valid(v) for v in views):
        log.warning("ignoring %s: not a lane carriers view", url)
        return []
    return views


def gather(admins: Sequence[str], fetch: Callable[[str], Any] = fetch_json) -> Propagation | None:
    """The Propagation part from every ``--admin`` URL; None when none of them has a carriers view."""
    views = [v for admin in dict.fromkeys(a.rstrip("/") for a in admins) for v in fetch_views(admin, fetch)]
    return propagation_of(views) if views else None
