"""Collecting the hops of the calls an app makes while it serves one request.

The sidecar's inbound side opens a `Collection` for each request, registered under the request's
trace keys. When the app calls out through the same sidecar with one of those trace ids, the
outbound side finds the collection, reserves a slot *when the call starts* (so the record is in
call order even when calls overlap) and fills it with the hops the call's answer reported. When
the app answers, the inbound side appends the collected hops, depth first, after its own hop.

The app does not have to forward anything lane-specific, only one trace header; an app that
forwards no trace header at all gets a record that stops at its own hop. A trace id is not proof
of belonging (clients choose them), so a key that two open collections claim at once is
*ambiguous* until the last of them closes: `find` skips it and the next key decides, else no
collection gets the call's hops (counted in ``lane_ambiguous_trace_ids_total``). Filing one
request's hops into another's record would be worse than a record that stops early; the same
holds for one trace visiting the same sidecar twice at the same time.
Bounded: at most `MAX_OPEN` collections and `MAX_HOPS` hops each.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import TracebackType
from typing import Final, Self

from opentelemetry.context import Context

from lane.core.hops import MAX_HOPS, Hop
from lane.dataplane.trace_cache import AMBIGUOUS_TRACE_IDS, TraceKey
from lane.dataplane.trace_identity import TraceIdentity

__all__ = ["MAX_OPEN", "Collection", "HopCollector"]

MAX_OPEN: Final = 10_000
_AMBIGUOUS_IN_COLLECTOR: Final = AMBIGUOUS_TRACE_IDS.labels(store="hop_collector")


class Collection:
    """The hops of the calls made while serving one request, slot per call, in start order.

    Also the block it is open for (`HopCollector.collect`): entering the ``with`` registers it, leaving
    it unregisters it, so nothing raised before the block leaves a collection registered. A plain
    object rather than a ``@contextmanager`` generator: one is opened per inbound request, and the
    generator's frames cost more than the registration itself.
    """

    __slots__ = ("_collector", "_count", "_keys", "_slots", "deadline", "identity", "request_id", "request_key",
                 "trace_context")

    def __init__(self, collector: HopCollector | None = None, keys: list[TraceKey] | None = None) -> None:
        self._collector = collector  # None: never registered (no keys, or the collector was full)
        self._keys = keys
        self._slots: list[tuple[Hop, ...] | None] = []
        self._count = 0
        # The request's tracing span (`lane.telemetry.tracing`), so calls that carry only a trace id like
        # x-request-id still get it as their parent; None when tracing is off.
        self.trace_context: Context | None = None
        # The request's trace identity and x-request-id, so the sidecar can give the app's calls
        # back the trace formats the app dropped (`lane.dataplane.trace_identity`).
        self.identity: TraceIdentity | None = None
        self.request_id: str | None = None
        self.request_key: str | None = None  # the id in baggage (`lane.core.wire.REQUEST_MEMBER`)
        # When the sidecar stops waiting for the app (`time.monotonic`): its calls are capped by it.
        self.deadline = math.inf

    def __enter__(self) -> Self:
        collector = self._collector
        if collector is not None and self._keys is not None and not collector._open_for(self, self._keys):
            self._collector = None  # the collector is full: a loose collection, found by nothing
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        collector, self._collector = self._collector, None
        if collector is not None and self._keys is not None:
            collector._close(self, self._keys)

    def reserve(self) -> int:
        self._slots.append(None)
        return len(self._slots) - 1

    def fill(self, slot: int, hops: Iterable[Hop]) -> None:
        if 0 <= slot < len(self._slots) and self._slots[slot] is None:
            room = max(0, MAX_HOPS - self._count)
            kept = tuple(hops)[:room]
            self._count += len(kept)
            self._slots[slot] = kept

    def hops(self) -> list[Hop]:
        return [hop for slot in self._slots if slot for hop in slot]

    def waiting(self) -> bool:
        """Whether a call the app made is still unanswered (the app is waiting on it, not hung)."""
        return None in self._slots


class HopCollector:
    def __init__(self, max_open: int = MAX_OPEN) -> None:
        self._max_open = max_open
        self._open = 0
        self._by_key: dict[TraceKey, list[Collection]] = {}
        self._ambiguous: set[TraceKey] = set()  # claimed by two collections since it was last free

    def __len__(self) -> int:
        return self._open

    def collect(self, keys: Iterable[TraceKey]) -> Collection:
        """A collection registered under *keys* for the ``with`` block it is used in: ``with
        collector.collect(keys) as collection`` (registered on entering, unregistered on leaving)."""
        keys = list(dict.fromkeys(keys))
        return Collection(self, keys) if keys else Collection()  # no keys: nothing could find it

    def _open_for(self, collection: Collection, keys: list[TraceKey]) -> bool:
        """Register *collection* under *keys*; False, and nothing registered, when `MAX_OPEN` are open."""
        if self._open >= self._max_open:
            return False
        self._open += 1
        by_key = self._by_key
        for key in keys:
            claimed = by_key.get(key)
            if claimed is None:
                by_key[key] = [collection]
                continue
            if claimed and key not in self._ambiguous:
                self._ambiguous.add(key)
                _AMBIGUOUS_IN_COLLECTOR.inc()
            claimed.append(collection)
        return True

    def _close(self, collection: Collection, keys: list[TraceKey]) -> None:
        self._open -= 1
        for key in keys:
            stack = self._by_key.get(key)
            if stack is not None:
                if collection in stack:
                    stack.remove(collection)
                if not stack:
                    del self._by_key[key]
                    self._ambiguous.discard(key)

    def find(self, keys: Iterable[TraceKey]) -> Collection | None:
        """The open collection under the first of *keys* that has exactly one (ambiguous keys are skipped)."""
        for key in keys:
            stack = self._by_key.get(key)
            if stack and key not in self._ambiguous:
                return stack[-1]
        return None
