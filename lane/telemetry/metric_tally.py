"""Per-request metric updates kept as plain ints and handed to prometheus-client in batches.

Every prometheus-client update takes a lock (its values are thread-safe) and, under ``--workers``,
writes a memory-mapped file; a proxy makes three of them per request (the request counter and the
in-flight gauge up and down), ~5% of the gateway's CPU per request. The data plane updates them
only from its event loop's thread, so it adds to a dict of pending amounts instead, and the amounts
reach the real metrics in one go:

* whenever the default registry is read (``/metrics``, tests): a collector registered first flushes;
* at most a second after the first pending update, by a timer on the running loop -- what other
  worker processes' ``/metrics`` (prometheus-client's multiprocess files) rely on;
* at once, when there is no running loop (a caller outside asyncio).

Histogram observations (`TalliedHistogram`) are kept the same way, as a bucket count per bucket and
a sum per child, and handed over by adding them to the child's bucket and sum values directly --
what ``Histogram.observe`` does one observation at a time, under a lock each (prometheus-client
has no public "observe n times" call; `tests/telemetry/test_metric_tally.py` checks the handover against
``observe`` so an upgrade that changes those internals fails a test, not a dashboard).
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol

from prometheus_client import REGISTRY
from prometheus_client.registry import Collector

__all__ = ["FLUSH_AFTER_SECONDS", "Tallied", "TalliedHistogram", "flush"]

FLUSH_AFTER_SECONDS: Final = 1.0


class _Incrementable(Protocol):
    def inc(self, amount: float = 1) -> None: ...


_pending: dict[_Incrementable, float] = {}
_observed: set[TalliedHistogram] = set()  # the histograms with pending observations
_timer: asyncio.TimerHandle | None = None
_timer_loop: asyncio.AbstractEventLoop | None = None


def flush() -> None:
    """Add every pending amount to its metric now."""
    global _timer
    if _timer is not None:
        _timer.cancel()
        _timer = None
    while _pending:
        child, amount = _pending.popitem()
        if amount:
            child.inc(amount)
    while _observed:
        _observed.pop().hand_over()


def _add(child: _Incrementable, amount: float) -> None:
    _pending[child] = _pending.get(child, 0) + amount
    if _timer is None or _timer_loop is None or _timer_loop.is_closed():  # a closed loop never fires its timer
        _arm()


def _arm() -> None:
    """Start the flush timer, the callers having seen none running (tested where they are: once per update)."""
    global _timer, _timer_loop
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        flush()
        return
    _timer, _timer_loop = loop.call_later(FLUSH_AFTER_SECONDS, flush), loop


class Tallied:
    """A counter or gauge child (``metric.labels(...)``) updated through the pending tally."""

    __slots__ = ("_child",)

    def __init__(self, child: Any) -> None:
        self._child: _Incrementable = child

    def inc(self, amount: float = 1) -> None:
        _add(self._child, amount)

    def dec(self, amount: float = 1) -> None:  # gauges only
        _add(self._child, -amount)


class TalliedHistogram:
    """A histogram child (``histogram.labels(...)``) observed through the pending tally."""

    __slots__ = ("_bounds", "_child", "_counted", "_counts")

    def __init__(self, child: Any, bounds: Sequence[float], counted: _Incrementable | None = None) -> None:
        """*counted*, a counter child, is incremented once per observation too (at the same cost as none)."""
        if not (hasattr(child, "_buckets") and hasattr(child, "_sum")) or len(child._buckets) != len(bounds) + 1:
            raise TypeError("not a prometheus-client histogram child with these bucket bounds (+Inf excluded)")
        self._child = child
        self._counted = counted
        self._bounds = tuple(bounds)  # the finite upper bounds, ascending
        self._counts = [0.0] * (len(bounds) + 2)  # pending: per bucket (the last one +Inf), then the sum

    def observe(self, amount: float) -> None:
        counts = self._counts
        counts[bisect_left(self._bounds, amount)] += 1  # the first bound >= amount, as observe() picks it
        counts[-1] += amount
        _observed.add(self)
        if _timer is None or _timer_loop is None or _timer_loop.is_closed():  # as `_add`
            _arm()

    def hand_over(self) -> None:
        counts, self._counts = self._counts, [0.0] * len(self._counts)
        self._child._sum.inc(counts[-1])
        if self._counted is not None:
            self._counted.inc(sum(counts[:-1]))
        for bucket, count in zip(self._child._buckets, counts[:-1], strict=True):
            if count:
                bucket.inc(count)


class _FlushOnCollect(Collector):
    """Registered before any metric, so a read of the registry sees every pending update."""

    def describe(self) -> Iterable[Any]:
        return ()

    def collect(self) -> Iterable[Any]:
        flush()
        return ()


REGISTRY.register(_FlushOnCollect())
