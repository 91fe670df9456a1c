"""The state of one sidecar process, shared by its inbound and outbound listeners.

The two listeners meet only here: the inbound side remembers ``trace id -> lane`` in `traces`
and opens a hop collection in `hops` for each request it forwards to the app; the outbound side
recovers the lane and fills that collection when the app calls out. Both live in process memory,
which is why a sidecar is one process (`lane.sidecar.WORKERS_REFUSED`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from multidict import CIMultiDict, CIMultiDictProxy

from .config import Endpoint
from .hop_collector import HopCollector
from .hops import FALLBACK_HEADER, FallbackReason, Hop
from .runtime import Runtime
from .trace_cache import TraceCache, TraceKey, trace_keys
from .tracing import Tracing
from .wire import request_lane

__all__ = ["Arrival", "Sidecar"]

_REASONS = frozenset(r.value for r in FallbackReason)


@dataclass(frozen=True, slots=True)
class Arrival:
    """What the inbound side learned of a request before forwarding it to the app (either core)."""

    requested: str  # the request's lane (the default lane when it carries none)
    keys: list[TraceKey]  # its trace ids, under which its lane is remembered and its hops collected
    reason: str | None  # why it fell back to this instance, as the routing proxy said
    own: Hop  # this instance's hop


@dataclass(slots=True)
class Sidecar:
    """The state one sidecar process shares between its inbound and outbound listeners."""

    runtime: Runtime
    service: str
    lane: str
    app: Endpoint
    traces: TraceCache
    hops: HopCollector
    tracing: Tracing = field(default_factory=Tracing)

    @classmethod
    def create(cls, runtime: Runtime, service: str, lane: str, app: Endpoint,
               tracing: Tracing | None = None) -> Sidecar:
        spec = runtime.config.proxy
        sidecar = cls(runtime, service, lane, app, TraceCache(spec.trace_cache_size, spec.trace_cache_ttl),
                      HopCollector(), tracing or Tracing())
        runtime.on_swap(lambda c: sidecar.traces.configure(c.proxy.trace_cache_size, c.proxy.trace_cache_ttl))
        return sidecar

    def arrive(self, received: CIMultiDictProxy[str] | CIMultiDict[str], headers: CIMultiDict[str],
               instance: str | None) -> Arrival:
        """Read the lane of an inbound request, remember it by trace id, and take the fallback reason off *headers*.

        *received* are the headers as they came, *headers* the ones leaving for the app.
        """
        config = self.runtime.config
        incoming = request_lane(headers, config.tag)
        requested = incoming or config.default_lane
        keys = trace_keys(received, config.proxy.trace_headers)
        if incoming is not None:
            self.traces.remember(keys, incoming)
        said = headers.popall(FALLBACK_HEADER, [""])[0].strip()
        reason = said if said in _REASONS and requested != self.lane else None
        return Arrival(requested, keys, reason, Hop(self.service, self.lane, requested, reason, instance))
