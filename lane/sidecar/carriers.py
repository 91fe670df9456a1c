"""Which lane carriers an app forwards: the first answer to "which app breaks our lanes?".

A sidecar hands its app every carrier of the lane (the tag header, the lane's baggage member and
every configured trace header, `lane.dataplane.trace_identity`). What comes back out on the app's outbound
calls is what the app's framework forwards. For each call the sidecar notes which carriers were
present and how the lane was found (`LaneSource`); `CarrierStats` keeps the counts and says in plain
words what the app drops, e.g. "service b's app drops x-mse-tag, baggage and traceparent; it
forwards only x-request-id". Served at ``/lane/carriers`` on the sidecar's admin listener, read by
``lane loadtest``. Counts are plain ints on the event loop's thread; the set of carriers is the
config's, so memory is bounded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from typing import Any

__all__ = ["CarrierStats", "LaneSource", "describe", "sum_views"]


class LaneSource(str, Enum):
    """How an outbound call's lane was found."""

    HEADER = "header"  # the app forwarded the tag header
    BAGGAGE = "baggage"  # the app forwarded the lane's baggage member
    RECOVERED = "recovered"  # only a trace header came back: the lane was recalled by its id
    LOST = "lost"  # nothing usable came back: the call left in the default lane (a propagation break)


class CarrierStats:
    """Per carrier, in how many of the app's outbound calls it was present; per source, how many calls."""

    __slots__ = ("calls", "carriers", "recovered_from", "seen", "service", "sources")

    def __init__(self, service: str, carriers: Iterable[str]) -> None:
        self.service = service
        self.carriers = tuple(dict.fromkeys(carriers))  # what the sidecar hands the app, in a stable order
        self.calls = 0
        self.seen = dict.fromkeys(self.carriers, 0)
        self.sources = dict.fromkeys((s.value for s in LaneSource), 0)
        self.recovered_from: dict[str, int] = {}  # trace header -> calls whose lane was recalled by it

    def record(self, present: Iterable[str], source: LaneSource, via: str | None = None) -> None:
        self.calls += 1
        seen = self.seen
        for name in present:
            if name in seen:
                seen[name] += 1
        self.sources[source._value_] += 1  # `_value_`: `.value` is a property, two Python calls per outbound call
        if via is not None:
            self.recovered_from[via] = self.recovered_from.get(via, 0) + 1

    def view(self) -> dict[str, Any]:
        forwarded = [c for c in self.carriers if self.calls and self.seen[c] == self.calls]
        sometimes = [c for c in self.carriers if 0 < self.seen[c] < self.calls]
        dropped = [c for c in self.carriers if self.calls and self.seen[c] == 0]
        return {
            "service": self.service,
            "calls": self.calls,
            "carriers": dict(self.seen),
            "lane_sources": dict(self.sources),
            "recovered_from": dict(self.recovered_from),
            "forwarded": forwarded,
            "sometimes": sometimes,
            "dropped": dropped,
            "verdict": describe(self.service, self.calls, forwarded, sometimes, dropped),
        }


def _words(names: Sequence[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return f"{', '.join(names[:-1])} and {names[-1]}"


def describe(service: str, calls: int, forwarded: Sequence[str], sometimes: Sequence[str],
             dropped: Sequence[str]) -> str:
    """One sentence on what *service*'s app forwards of the lane's carriers."""
    if not calls:
        return f"service {service}'s app made no outbound call through its sidecar yet"
    if not dropped and not sometimes:
        return f"service {service}'s app forwards every lane carrier"
    parts = []
    if dropped:
        parts.append(f"service {service}'s app drops {_words(dropped)}")
    if forwarded:
        parts.append(f"it forwards only {_words(forwarded)}" if dropped else
                     f"service {service}'s app forwards {_words(forwarded)}")
    elif not sometimes:
        parts.append("it forwards none of them: its calls leave in the default lane")
    if sometimes:
        parts.append(f"sometimes {_words(sometimes)}")
    return "; ".join(parts)


def sum_views(views: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One view per service from the `CarrierStats.view` of each of its sidecars (instances, lanes).

    An app is one code base whatever instance runs it, so a team wants one answer per service: calls,
    carrier and lane-source counts are summed, and forwarded / sometimes / dropped and the verdict are
    recomputed from the sums (a carrier one instance always forwards and another never is
    "sometimes"). Services keep the order they first appear in; carriers keep the sidecars' order.
    """
    grouped: dict[str, dict[str, Any]] = {}
    for view in views:
        into = grouped.setdefault(str(view["service"]),
                                  {"calls": 0, "carriers": {}, "lane_sources": {}, "recovered_from": {}})
        into["calls"] += int(view["calls"])
        for key in ("carriers", "lane_sources", "recovered_from"):
            for name, count in view.get(key, {}).items():
                into[key][name] = into[key].get(name, 0) + int(count)
    out = []
    for service, into in grouped.items():
        calls, seen = into["calls"], into["carriers"]
        forwarded = [c for c in seen if calls and seen[c] == calls]
        sometimes = [c for c in seen if 0 < seen[c] < calls]
        dropped = [c for c in seen if calls and seen[c] == 0]
        out.append({
            "service": service, "calls": calls, "carriers": seen, "lane_sources": into["lane_sources"],
            "recovered_from": into["recovered_from"], "forwarded": forwarded, "sometimes": sometimes, "dropped": dropped,
            "verdict": describe(service, calls, forwarded, sometimes, dropped),
        })
    return out
