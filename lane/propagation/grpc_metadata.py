"""gRPC metadata as an OpenTelemetry carrier, and the two things lane does with it.

gRPC metadata is a sequence of ``(key, value)`` pairs, not a mapping: keys are lower-case, a key may
repeat, and ``-bin`` keys carry bytes. `MetadataCarrier` holds such a sequence with the ``getall``
shape `lane.propagation.propagator` already reads (so a ``baggage`` split over two entries is still one
``baggage``), and `METADATA_GETTER` / `METADATA_SETTER` adapt it to any ``TextMapPropagator``; bytes
values are kept as they are and never shown to a propagator.

* `incoming_context` — what a server interceptor makes current for the handler: the global
  propagators' context (trace context, *all* the baggage) and then the lane, extracted last, exactly
  as `lane.propagation.aiohttp_server` does for HTTP. An invalid lane (tag or baggage) is treated as absent: the
  handler runs in the default lane (the downgrade of an unknown version to the default one).
* `outgoing_metadata` — what a client interceptor sends: the caller's context injected by the global
  propagators where an earlier interceptor (OpenTelemetry's) has not already done it, then the lane,
  first in ``baggage`` and in the tag key, with the precedence of `lane.propagation.aiohttp_client.apply_lane`.

This module imports no ``grpc``: it only handles pairs (and `iterate_in`, which both sides use to
run a stream's steps in a context).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Final

from opentelemetry import baggage as otel_baggage
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context, attach, detach, get_current
from opentelemetry.propagators import textmap

from lane.core.baggage import BAGGAGE_HEADER
from lane.core.tags import carried_lane
from lane.propagation.propagator import LanePropagator, other_global_propagators, without_lane

__all__ = [
    "METADATA_GETTER",
    "METADATA_SETTER",
    "MetadataCarrier",
    "MetadataGetter",
    "MetadataSetter",
    "incoming_context",
    "iterate_in",
    "outgoing_metadata",
]

Pair = tuple[str, str | bytes]


class MetadataCarrier:
    """A mutable copy of gRPC metadata; keys are lower-cased, pairs that are not metadata are dropped."""

    __slots__ = ("pairs",)

    def __init__(self, metadata: Iterable[Any] | None = None) -> None:
        self.pairs: list[Pair] = []
        for item in metadata or ():
            # grpc.aio.Metadata iterates (key, value) tuples; sync servers give _Metadatum(key, value)
            key, value = item[0], item[1]
            if isinstance(key, str) and isinstance(value, (str, bytes)):
                self.pairs.append((key.lower(), value))

    def getall(self, name: str, default: Iterable[str] = ()) -> list[str]:
        """Every text value of *name*, in order (the ``CIMultiDict.getall`` shape)."""
        name = name.lower()
        found = [v for k, v in self.pairs if k == name and isinstance(v, str)]
        return found or list(default)

    def keys(self) -> list[str]:
        return list(dict.fromkeys(k for k, _ in self.pairs))

    def set(self, name: str, value: str | None) -> None:
        """Replace every entry of *name* with one; None or ``""`` removes them all."""
        name = name.lower()
        self.pairs = [(k, v) for k, v in self.pairs if k != name]
        if value:
            self.pairs.append((name, value))

    def as_tuple(self) -> tuple[Pair, ...]:
        return tuple(self.pairs)


class MetadataGetter(textmap.Getter[MetadataCarrier]):
    def get(self, carrier: MetadataCarrier, key: str) -> list[str] | None:
        return carrier.getall(key) or None

    def keys(self, carrier: MetadataCarrier) -> list[str]:
        return carrier.keys()


class MetadataSetter(textmap.Setter[MetadataCarrier]):
    """Sets one entry per key; an empty value removes the key (how `LanePropagator` deletes)."""

    def set(self, carrier: MetadataCarrier, key: str, value: str) -> None:
        carrier.set(key, value)


METADATA_GETTER: Final = MetadataGetter()
METADATA_SETTER: Final = MetadataSetter()
_W3C_BAGGAGE: Final = W3CBaggagePropagator()


def incoming_context(metadata: Iterable[Any] | None, lanes: LanePropagator, *, extract_global: bool = True) -> Context:
    """The context a handler runs in: the caller's, from its metadata, with the lane extracted last.

    It starts from an empty context rather than the current one: a ``grpc.aio`` server's tasks
    inherit whatever context ``server.start()`` ran in, and baggage from there must not leak into
    requests that carry none. A server span already current (OpenTelemetry's server interceptor runs
    outside this one) stays the parent of the handler's work.
    """
    carrier = MetadataCarrier(metadata)
    server_span = trace.get_current_span()
    ctx = Context()
    if extract_global:
        for other in other_global_propagators(lanes):
            ctx = other.extract(carrier, context=ctx, getter=METADATA_GETTER)
    if server_span.get_span_context().is_valid:
        ctx = trace.set_span_in_context(server_span, ctx)
    return lanes.extract(carrier, context=ctx, getter=METADATA_GETTER)  # last: stock baggage cannot overrule it


def outgoing_metadata(
    metadata: Iterable[Any] | None,
    lanes: LanePropagator,
    context: Context | None = None,
    *,
    inject_global: bool = True,
) -> tuple[MetadataCarrier, Context]:
    """The metadata an outgoing call should carry, and the context in the lane it carries.

    Global propagators only add keys the call does not have yet: an outer interceptor (OpenTelemetry's
    sync client one) has injected its client span's ``traceparent``, which must not be replaced by
    the parent's. The lane: a valid tag the app put on the call itself, else the lane of *context*,
    else a valid lane member of the call's ``baggage``; invalid values are removed, never forwarded.
    """
    ctx = get_current() if context is None else context
    carrier = MetadataCarrier(metadata)
    if inject_global:
        fresh = MetadataCarrier()
        for other in other_global_propagators(lanes):
            other.inject(fresh, context=ctx, setter=METADATA_SETTER)
        present = set(carrier.keys())
        carrier.pairs.extend(pair for pair in fresh.pairs if pair[0] not in present)
    tags = carrier.getall(lanes.header)
    bags = carrier.getall(BAGGAGE_HEADER)
    lane = carried_lane(tags, bags, lanes.baggage_key, lambda: lanes.current_lane(ctx))[0]
    if lane is None:
        carrier.set(lanes.header, None)
        ctx = without_lane(ctx, key=lanes.baggage_key)
    else:
        ctx = lanes.with_lane(lane, ctx)
    lanes.inject(carrier, context=ctx, setter=METADATA_SETTER)  # tag + lane first in one baggage entry
    # The context the rest of the call runs in holds the baggage as sent, lane first: an inner
    # interceptor that injects from it (OpenTelemetry's sync one, after a lane interceptor added with
    # ``intercept_channel``) rewrites ``baggage`` with the same members instead of the caller's.
    sent = _W3C_BAGGAGE.extract(carrier, context=otel_baggage.clear(ctx), getter=METADATA_GETTER)
    return carrier, (_lane_first(sent, lanes, lane) if lane else without_lane(sent, key=lanes.baggage_key))


def _lane_first(ctx: Context, lanes: LanePropagator, lane: str) -> Context:
    """*ctx* in *lane*, with the lane the first baggage entry (the stock baggage propagator writes
    entries in the context's order, so it then writes the lane first too)."""
    entries = otel_baggage.get_all(ctx)
    out = lanes.with_lane(lane, otel_baggage.clear(ctx))
    for name, value in entries.items():
        if name != lanes.baggage_key:
            out = otel_baggage.set_baggage(name, value, out)
    return out


def iterate_in(ctx: Context, responses: Iterator[Any]) -> Iterator[Any]:
    """*responses* with every step (and its close) run in *ctx*, attached and detached around each
    ``next``: a generator's body runs only when iterated, often after the caller's context is gone."""
    try:
        while True:
            token = attach(ctx)
            try:
                item = next(responses)
            except StopIteration:
                return
            finally:
                detach(token)
            yield item
    finally:
        close = getattr(responses, "close", None)
        if callable(close):
            token = attach(ctx)
            try:
                close()
            finally:
                detach(token)
