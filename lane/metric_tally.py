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
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Final, Protocol

from prometheus_client import REGISTRY
from prometheus_client.registry import Collector

__all__ = ["FLUSH_AFTER_SECONDS", "Tallied", "flush"]

FLUSH_AFTER_SECONDS: Final = 1.0


class _Incrementable(Protocol):
    def inc(self, amount: float = 1) -> None: ...


_pending: dict[_Incrementable, float] = {}
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


def _add(child: _Incrementable, amount: float) -> None:
    global _timer, _timer_loop
    _pending[child] = _pending.get(child, 0) + amount
    if _timer is None or _timer_loop is None or _timer_loop.is_closed():  # a closed loop never fires its timer
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


class _FlushOnCollect(Collector):
    """Registered before any metric, so a read of the registry sees every pending update."""

    def describe(self) -> Iterable[Any]:
        return ()

    def collect(self) -> Iterable[Any]:
        flush()
        return ()


REGISTRY.register(_FlushOnCollect())
