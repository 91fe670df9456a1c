"""Per-lane request figures from the proxies' Prometheus text, and their change over a window.

Every proxy's ``/metrics`` is read (the gateway's and every sidecar's), at the start and at the end
of a step's interval; the difference is the step's traffic, so what earlier steps saw never dilutes
what this one judges. Rows are keyed by (proxy, service, requested lane, served lane) and summed
over instances. Both label spellings are read: ``service``/``status`` (before the request-duration
histogram came) and ``destination_service``/``response_code`` (with it); the duration histogram
``lane_request_duration_seconds`` gives the p99, and without it p99 is unknown (not judged).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Key", "Snapshot", "Tally", "parse_metrics"]

REQUESTS: Final = "lane_requests"
DURATION: Final = "lane_request_duration_seconds"

Key = tuple[str, str, str, str]  # (proxy, service, requested lane, served lane)


@dataclass(slots=True)
class Tally:
    """Requests, server errors (5xx) and the cumulative duration buckets (``le`` -> count) of one row."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None

    def quantile(self, q: float) -> float | None:
        """The *q* quantile in seconds, interpolated inside its bucket as PromQL's ``histogram_quantile``."""
        bounds = sorted(self.buckets)
        if not bounds or self.buckets[bounds[-1]] <= 0:
            return None
        total = self.buckets[bounds[-1]]
        rank = q * total
        lower, below = 0.0, 0.0
        for bound in bounds:
            count = self.buckets[bound]
            if count >= rank:
                if bound == float("inf"):  # beyond the last finite bound: PromQL answers that bound
                    return lower
                inside = count - below
                return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
            lower, below = bound, count
        return lower

    def add(self, other: Tally, sign: float = 1.0) -> None:
        self.requests += sign * other.requests
        self.errors += sign * other.errors
        for le, count in other.buckets.items():
            self.buckets[le] = self.buckets.get(le, 0.0) + sign * count


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What every scraped proxy had counted at one moment, summed per row."""

    rows: Mapping[Key, Tally]
    has_durations: bool

    def since(self, before: Snapshot) -> Snapshot:
        """The traffic between *before* and now (a row that went down was reset: all of it is new)."""
        rows: dict[Key, Tally] = {}
        for key, now in self.rows.items():
            delta = Tally()
            delta.add(now)
            old = before.rows.get(key)
            if old is not None and old.requests <= now.requests:
                delta.add(old, -1.0)
            rows[key] = delta
        return Snapshot(rows, self.has_durations)

    def total(
        self,
        *,
        proxy: str,
        service: str | None = None,
        requested: str | None = None,
        served: str | None = None,
    ) -> Tally:
        """The rows that match, summed (None: any value)."""
        out = Tally()
        for (p, svc, req, srv), tally in self.rows.items():
            if p == proxy and service in (None, svc) and requested in (None, req) and served in (None, srv):
                out.add(tally)
        return out

    def services(self, proxy: str, served: str) -> list[str]:
        """The services whose *proxy* rows show requests served by lane *served*, sorted."""
        return sorted(
            {svc for (p, svc, _, srv), t in self.rows.items() if p == proxy and srv == served and t.requests}
        )


def _key(labels: Mapping[str, str]) -> Key:
    service = labels.get("destination_service", labels.get("service", ""))
    return (labels.get("proxy", ""), service, labels.get("requested_lane", ""), labels.get("served_lane", ""))


def _code(labels: Mapping[str, str]) -> int:
    text = labels.get("response_code", labels.get("status", "0"))
    return int(text) if text.isdigit() else 0


def parse_metrics(texts: Iterable[str]) -> Snapshot:
    """The lane request rows of every proxy's exposition text in *texts*, summed.

    Raises ``ValueError`` on text that is not the Prometheus exposition format.
    """
    rows: dict[Key, Tally] = {}
    durations = False
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name == REQUESTS:
                for sample in family.samples:
                    if sample.name == f"{REQUESTS}_total":
                        tally = rows.setdefault(_key(sample.labels), Tally())
                        tally.requests += sample.value
                        if _code(sample.labels) >= 500:
                            tally.errors += sample.value
            elif family.name == DURATION:
                durations = True
                for sample in family.samples:
                    if sample.name == f"{DURATION}_bucket":
                        le = float(sample.labels["le"])
                        tally = rows.setdefault(_key(sample.labels), Tally())
                        tally.buckets[le] = tally.buckets.get(le, 0.0) + sample.value
    return Snapshot(rows, durations)
