"""The state of one sidecar process, shared by its inbound and outbound listeners.

The two listeners meet only here: the inbound side remembers ``trace id -> lane`` in `traces`
and opens a hop collection in `hops` for each request it forwards to the app; the outbound side
recovers the lane and fills that collection when the app calls out. Both live in process memory,
which is why a sidecar is one process (`lane.sidecar.main.WORKERS_REFUSED`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from time import monotonic

from multidict import CIMultiDict, CIMultiDictProxy

from lane.core.baggage import BAGGAGE_HEADER, get_member
from lane.core.config import LaneConfig
from lane.core.deadline import tighten
from lane.core.endpoint import Endpoint
from lane.core.hops import FALLBACK_HEADER, PATH_HEADER, FallbackReason, Hop, encode_path, parse_path
from lane.core.wire import lane_and_carrier, request_key, set_lane
from lane.dataplane.runtime import Runtime
from lane.dataplane.trace_cache import REQUEST, TraceCache, TraceKey, trace_key_sources
from lane.dataplane.trace_identity import TraceIdentity, complete_trace_headers, identity_of
from lane.sidecar.app import app_budget
from lane.sidecar.carriers import CarrierStats, LaneSource
from lane.sidecar.hop_collector import Collection, HopCollector
from lane.telemetry.metrics import count_lane_source
from lane.telemetry.tracing import Tracing

__all__ = ["Arrival", "Departure", "Sidecar"]

_REASONS = frozenset(r.value for r in FallbackReason)


@dataclass(frozen=True, slots=True)
class Arrival:
    """What the inbound side learned of a request before forwarding it to the app (either core)."""

    requested: str  # the request's lane (the default lane when it carries none)
    keys: list[TraceKey]  # its trace ids, under which its lane is remembered and its hops collected
    reason: str | None  # why it fell back to this instance, as the routing proxy said
    own: Hop  # this instance's hop
    identity: TraceIdentity  # the one trace identity every trace format handed to the app derives from
    request_id: str | None  # the x-request-id handed to the app
    wait: float  # seconds to wait for the app: the caller's budget (`lane.sidecar.app.app_budget`)
    request_key: str | None = None  # the id in the baggage member `lane.core.wire.REQUEST_MEMBER` handed to the app


@dataclass(frozen=True, slots=True)
class Departure:
    """What the outbound side learned of one call of the app before sending it on (either core)."""

    lane: str  # the lane the call travels in
    source: LaneSource  # how that lane was found
    via: str | None  # the trace header it was recovered from (source RECOVERED)
    collection: Collection | None  # the hop collection of the request the call serves, if found

    def answered(self, answer: CIMultiDict[str]) -> tuple[Hop, ...]:
        """The hops of the call's answer headers, the callee's own hop marked ``recovered=`` when the
        lane was recalled by a trace id (rewritten in *answer* too, so the app sees what the record says).

        Empty, and nothing parsed, when no collection waits for them and nothing is to be marked: a
        call that serves no inbound request of this sidecar (the record is only read by a collection)
        costs no parse of the record its answer carries.
        """
        if self.collection is None and self.via is None:
            return ()
        hops = parse_path(answer.get(PATH_HEADER))
        if self.via is None or not hops or hops[0].recovered:
            return hops
        hops = (replace(hops[0], recovered=self.via), *hops[1:])
        answer[PATH_HEADER] = encode_path(hops)
        return hops


def carriers_of(config: LaneConfig) -> tuple[str, ...]:
    """Every lane carrier a sidecar hands its app: the tag header, ``baggage``, the trace headers."""
    return (config.tag.header, BAGGAGE_HEADER, *config.proxy.trace_headers)


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
    carriers: CarrierStats = field(default_factory=lambda: CarrierStats("", ()))

    @classmethod
    def create(cls, runtime: Runtime, service: str, lane: str, app: Endpoint,
               tracing: Tracing | None = None) -> Sidecar:
        spec = runtime.config.proxy
        sidecar = cls(runtime, service, lane, app, TraceCache(spec.trace_cache_size, spec.trace_cache_ttl),
                      HopCollector(), tracing or Tracing(), CarrierStats(service, carriers_of(runtime.config)))

        def swapped(config: LaneConfig) -> None:
            sidecar.traces.configure(config.proxy.trace_cache_size, config.proxy.trace_cache_ttl)
            if carriers_of(config) != sidecar.carriers.carriers:
                sidecar.carriers = CarrierStats(service, carriers_of(config))

        runtime.on_swap(swapped)
        return sidecar

    def arrive(self, received: CIMultiDictProxy[str] | CIMultiDict[str], headers: CIMultiDict[str],
               instance: str | None) -> Arrival:
        """Read the lane of an inbound request, hand the app every carrier of it, and remember it by trace id.

        *received* are the headers as they came, *headers* the ones leaving for the app: they get the
        tag header, the baggage member and every configured trace format (`lane.dataplane.trace_identity`), so
        whichever of them the app forwards, the outbound side finds the lane and this request's hops.
        The fallback reason the routing proxy sent is taken off them.
        """
        config = self.runtime.config
        incoming = lane_and_carrier(headers, config.tag)[0]
        requested = incoming or config.default_lane
        names = config.proxy.trace_headers
        completed = complete_trace_headers(headers, names, service=self.service)
        identity, keys = completed.identity, completed.keys
        key = request_key(headers) or headers.get("x-request-id") or identity.trace_hex
        set_lane(headers, config.tag, requested, key)
        if (REQUEST, key) not in keys:  # an app that forwards only baggage keeps its hop record
            keys.append((REQUEST, key))
        self.traces.remember(keys, requested)
        said = headers.popall(FALLBACK_HEADER, [""])[0].strip()
        reason = said if said in _REASONS and requested != self.lane else None
        return Arrival(requested, keys, reason, Hop(self.service, self.lane, requested, reason, instance),
                       identity, headers.get("x-request-id"), app_budget(received, headers, config.proxy), key)

    def collecting(self, arrival: Arrival, headers: CIMultiDict[str]) -> Collection:
        """The hop collection of an inbound request while its app serves it, knowing its trace identity:
        use it as ``with sidecar.collecting(arrival, headers) as collection`` (`HopCollector.collect`).

        *headers* are the ones leaving for the app, read after tracing injected the request's span:
        calls the app makes without a ``traceparent`` get theirs back as children of that span.
        """
        collection = self.hops.collect(arrival.keys)
        # with tracing on, the request leaves with this sidecar's span as its parent: read it back
        collection.identity = (identity_of(headers) or arrival.identity) if self.tracing.enabled \
            else arrival.identity
        collection.request_id = arrival.request_id
        collection.request_key = arrival.request_key
        collection.deadline = monotonic() + arrival.wait  # the app's calls must be answered before
        return collection

    def depart(self, headers: CIMultiDict[str]) -> Departure:
        """The lane of an outbound call of the app; *headers* (leaving) get every carrier of it back.

        The lane is the call's own tag header, else its baggage member, else the lane recalled by one
        of its trace ids, else the default lane (a propagation break: counted, never another
        request's lane). What the app forwarded is counted in `carriers` and
        ``lane_outbound_lane_source_total``; the trace formats the app dropped are restored from the
        identity of the request the call serves, so the next app gets the full set.
        """
        config = self.runtime.config
        names = config.proxy.trace_headers
        lane, carrier = lane_and_carrier(headers, config.tag)
        sources = trace_key_sources(headers, names)
        present = [name for _, name in sources]
        key = request_key(headers)
        if key is not None:
            sources.append(((REQUEST, key), BAGGAGE_HEADER))
        keys = list(dict.fromkeys([k for k, _ in sources]))
        if carrier == "header":
            present.append(config.tag.header)
        if carrier is not None and get_member(headers.getall(BAGGAGE_HEADER, ()), config.tag.baggage_key):
            present.append(BAGGAGE_HEADER)
        via = None
        if lane is not None:
            source = LaneSource.HEADER if carrier == "header" else LaneSource.BAGGAGE
        else:
            recalled = self.traces.recall_by(keys)
            if recalled is not None:
                via = next(name for k, name in sources if k == recalled[1])
                lane, source = recalled[0], LaneSource.RECOVERED
            else:
                lane, source = config.default_lane, LaneSource.LOST
        collection = self.hops.find(keys)
        known = {name: k for k, name in sources if name != BAGGAGE_HEADER}
        if collection is not None:
            tighten(headers, collection.deadline, monotonic(), config.proxy.deadline_margin)
            complete_trace_headers(headers, names, service=self.service, fallback=collection.identity,
                                   request_id=collection.request_id, known=known)
        else:
            complete_trace_headers(headers, names, service=self.service, known=known)
        set_lane(headers, config.tag, lane, key or (collection.request_key if collection is not None else None))
        self.carriers.record(present, source, via)
        count_lane_source(self.service, source._value_, via or "")  # `_value_`: see `CarrierStats.record`
        return Departure(lane, source, via, collection)

