"""The state of one sidecar process, shared by its inbound and outbound listeners.

The two listeners meet only here: the inbound side remembers ``trace id -> lane`` in `traces`
and opens a hop collection in `hops` for each request it forwards to the app; the outbound side
recovers the lane and fills that collection when the app calls out. Both live in process memory,
which is why a sidecar is one process (`lane.sidecar.WORKERS_REFUSED`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import Endpoint
from .hop_collector import HopCollector
from .runtime import Runtime
from .trace_cache import TraceCache
from .tracing import Tracing

__all__ = ["Sidecar"]


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

