"""The live lane topology: which ``service@lane`` called which, read from the proxies' own metrics.

Every edge comes from the caller's side, where a proxy knows both ends: the gateway's and each
sidecar outbound's ``lane_requests_total`` carry ``source_service``/``source_lane`` (``gateway``, or
the sidecar's own service and lane) and ``destination_service``/``served_lane`` -- so
``source@lane -> destination@served`` is one call edge, with its requested lane and fallback reason
(``no-instance``, ``unhealthy``, ``connect-failed``; ``strict`` for a refusal, drawn to
``service@none``). Its p99 comes from ``lane_request_duration_seconds`` (the same labels but the
fallback, so edges that differ only in fallback share one). A sidecar's inbound samples say which
``service@lane`` it is; its ``lane_outbound_lane_source_total{source="lost"}`` counts its app's calls
that lost the lane (a propagation break, drawn in red) and ``source="recovered"`` the ones the
sidecar recalled from a trace header.

Rates need two readings: `collect` scrapes every admin twice, *window* seconds apart; with a window of
0 there is one reading and the rates are left out (totals and lifetime p99 only).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "Edge", "Graph", "Node", "Reading", "Sample", "build_graph", "collect", "expand_admins", "quantile", "read_all",
    "read_metrics", "read_samples",
]

GATEWAY = "gateway"
CALLER_PROXIES = frozenset({"gateway", "outbound"})

EdgeKey = tuple[str, str, str, str]  # (source node, target node, requested lane, fallback)
SpanKey = tuple[str, str, str]  # (source node, target node, requested lane): what the histogram can tell apart


@dataclass(frozen=True, slots=True)
class Node:
    name: str  # "service@lane", or "gateway"
    depth: int  # calls from the gateway (columns of the picture)
    lost: int = 0  # outbound calls of its app that lost the lane: a propagation break
    recovered: Mapping[str, int] = field(default_factory=dict)  # trace header -> calls whose lane it recalled
    refusal: bool = False  # "service@none": no lane could (or, strict, would) serve

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "depth": self.depth, "lost": self.lost, "recovered": dict(self.recovered),
                "refusal": self.refusal}


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    requested: str  # the lane the calls were in
    fallback: str  # "" when served in the requested lane
    requests: float  # since the proxies started
    errors: float  # answered 5xx
    rate: float | None  # requests per second over the window
    error_rate: float | None  # errors / requests over the window (since start without a window)
    p99_seconds: float | None

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "requested": self.requested, "fallback": self.fallback,
                "requests": self.requests, "errors": self.errors, "rate": self.rate, "error_rate": self.error_rate,
                "p99_seconds": self.p99_seconds}


@dataclass(frozen=True, slots=True)
class Graph:
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    window: float
    unreachable: tuple[str, ...] = ()  # admin URLs that did not answer

    def as_json(self) -> dict[str, Any]:
        return {"nodes": [n.as_json() for n in self.nodes], "edges": [e.as_json() for e in self.edges],
                "window_seconds": self.window, "unreachable": list(self.unreachable)}


@dataclass(slots=True)
class Reading:
    """What one or more ``/metrics`` texts say, summed: the inputs of `build_graph`."""

    calls: dict[EdgeKey, float] = field(default_factory=dict)
    errors: dict[EdgeKey, float] = field(default_factory=dict)
    buckets: dict[SpanKey, dict[float, float]] = field(default_factory=dict)  # le -> cumulative count
    lost: dict[str, int] = field(default_factory=dict)  # node -> calls
    recovered: dict[str, dict[str, int]] = field(default_factory=dict)  # node -> via -> calls
    unreachable: list[str] = field(default_factory=list)

    def add(self, other: Reading) -> None:
        for mine, theirs in ((self.calls, other.calls), (self.errors, other.errors)):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0.0) + value
        for span, buckets in other.buckets.items():
            slot = self.buckets.setdefault(span, {})
            for le, count in buckets.items():
                slot[le] = slot.get(le, 0.0) + count
        for node, lost in other.lost.items():
            self.lost[node] = self.lost.get(node, 0) + lost
        for node, vias in other.recovered.items():
            slot_via = self.recovered.setdefault(node, {})
            for via, count in vias.items():
                slot_via[via] = slot_via.get(via, 0) + count
        self.unreachable.extend(other.unreachable)


def _node(service: str, lane: str) -> str:
    return f"{service}@{lane or 'none'}"


Sample = tuple[str, Mapping[str, str], float]  # (name, labels, value)


def read_metrics(text: str) -> Reading:
    """One proxy's ``/metrics`` as a `Reading`."""
    return read_samples((s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples)


def read_samples(samples: Iterable[Sample]) -> Reading:
    """The samples of one proxy (its own /metrics, or its series in Prometheus) as a `Reading`."""
    reading = Reading()
    identity: str | None = None  # a sidecar's own service@lane, from its inbound samples
    lost = 0
    recovered: dict[str, int] = {}
    for name, labels, value in samples:
        if name == "lane_requests_total":
            if labels.get("proxy") == "inbound":
                identity = _node(labels.get("destination_service", ""), labels.get("served_lane", ""))
                continue
            if labels.get("proxy") not in CALLER_PROXIES or "destination_service" not in labels:
                continue
            key = (*_span(labels), labels.get("fallback", ""))
            reading.calls[key] = reading.calls.get(key, 0.0) + value
            if labels.get("response_code", "").startswith("5"):
                reading.errors[key] = reading.errors.get(key, 0.0) + value
        elif name == "lane_request_duration_seconds_bucket":
            if labels.get("proxy") not in CALLER_PROXIES or "destination_service" not in labels:
                continue
            slot = reading.buckets.setdefault(_span(labels), {})
            le = float(labels["le"])
            slot[le] = slot.get(le, 0.0) + value
        elif name == "lane_outbound_lane_source_total":
            if labels.get("source") == "lost":
                lost += int(value)
            elif labels.get("source") == "recovered" and value:
                via = labels.get("via") or "a trace header"
                recovered[via] = recovered.get(via, 0) + int(value)
    if identity is not None:
        if lost:
            reading.lost[identity] = lost
        if recovered:
            reading.recovered[identity] = recovered
    return reading


def _span(labels: Mapping[str, str]) -> SpanKey:
    """An absent label is an empty one: Prometheus stores ``source_lane=""`` (the gateway's) as no label."""
    get = labels.get
    source = GATEWAY if get("proxy") == "gateway" else _node(get("source_service", ""), get("source_lane", ""))
    return source, _node(labels["destination_service"], get("served_lane", "")), get("requested_lane", "")


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus's ``histogram_quantile`` over cumulative *buckets* (upper bound -> count); None if empty."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if upper == float("inf"):
                return lower  # the highest finite bound, as Prometheus answers
            return lower + (upper - lower) * (rank - below) / (count - below) if count > below else upper
        lower, below = upper, count
    return lower


def _minus(now: Mapping[Any, float], before: Mapping[Any, float]) -> dict[Any, float]:
    return {key: max(0.0, value - before.get(key, 0.0)) for key, value in now.items()}


def build_graph(now: Reading, before: Reading | None = None, window: float = 0.0) -> Graph:
    """The graph of *now*; rates, error rates and p99 over the *window* since *before* when given."""
    delta = before is not None and window > 0
    edges = []
    for key, total in sorted(now.calls.items()):
        if total <= 0:
            continue
        errors = now.errors.get(key, 0.0)
        buckets = now.buckets.get(key[:3], {})
        rate = error_rate = None
        if delta and before is not None:
            recent = total - before.calls.get(key, 0.0)
            recent_errors = errors - before.errors.get(key, 0.0)
            rate = max(0.0, recent) / window
            error_rate = recent_errors / recent if recent > 0 else 0.0
            recent_buckets = _minus(buckets, before.buckets.get(key[:3], {}))
            if any(recent_buckets.values()):
                buckets = recent_buckets
        else:
            error_rate = errors / total
        source, target, requested, fallback = key
        edges.append(Edge(source, target, requested, fallback, total, errors, rate, error_rate,
                          quantile(0.99, buckets)))
    return Graph(_nodes(edges, now), tuple(edges), window if delta else 0.0, tuple(now.unreachable))


def _nodes(edges: Sequence[Edge], reading: Reading) -> tuple[Node, ...]:
    names = {e.source for e in edges} | {e.target for e in edges} | set(reading.lost) | set(reading.recovered)
    out: dict[str, list[str]] = {}
    for edge in edges:
        out.setdefault(edge.source, []).append(edge.target)
    depth = {GATEWAY: 0}
    queue = deque([GATEWAY])
    while queue:  # breadth first: each node in the column of its shortest call path from the gateway
        name = queue.popleft()
        for target in out.get(name, ()):
            if target not in depth:
                depth[target] = depth[name] + 1
                queue.append(target)
    nodes = [Node(name, depth.get(name, 1), reading.lost.get(name, 0), reading.recovered.get(name, {}),
                  refusal=name.endswith("@none")) for name in names]
    return tuple(sorted(nodes, key=lambda n: (n.depth, n.name)))


async def expand_admins(session: aiohttp.ClientSession, admins: Iterable[str]) -> list[str]:
    """The proxy admin URLs: a `lane demo` admin stands for the admins of all its proxies (``/lane/admins``)."""
    urls: list[str] = []
    for admin in admins:
        base = admin.rstrip("/")
        try:
            async with session.get(f"{base}/lane/admins") as resp:
                listed = await resp.json() if resp.status == 200 else None
        except (TimeoutError, aiohttp.ClientError, ValueError):
            listed = None
        if isinstance(listed, dict) and isinstance(listed.get("admins"), list):
            urls.extend(str(url).rstrip("/") for url in listed["admins"])
        else:
            urls.append(base)
    return list(dict.fromkeys(urls))


async def _scrape(session: aiohttp.ClientSession, admin: str) -> Reading:
    try:
        async with session.get(f"{admin}/metrics") as resp:
            if resp.status != 200:
                raise aiohttp.ClientError(f"HTTP {resp.status}")
            text = await resp.text()
        return read_metrics(text)
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return Reading(unreachable=[admin])


async def read_all(session: aiohttp.ClientSession, admins: Sequence[str]) -> Reading:
    total = Reading()
    for reading in await asyncio.gather(*(_scrape(session, admin) for admin in admins)):
        total.add(reading)
    return total


async def collect(admins: Sequence[str], window: float, timeout: float = 5.0) -> Graph:
    """Read every admin (a demo admin stands for its proxies) and build the graph."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        proxies = await expand_admins(session, admins)
        if window <= 0:
            return build_graph(await read_all(session, proxies))
        before = await read_all(session, proxies)
        await asyncio.sleep(window)
        return build_graph(await read_all(session, proxies), before, window)
