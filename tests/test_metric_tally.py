"""lane/metric_tally.py: batched metric updates lose nothing and are never read stale."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from lane import metric_tally
from lane.metric_tally import Tallied


def _metrics(registry: CollectorRegistry) -> tuple[Counter, Gauge]:
    return (Counter("tally_test", "a test counter", ["k"], registry=registry),
            Gauge("tally_test_gauge", "a test gauge", registry=registry))


async def test_a_read_of_the_registry_sees_every_pending_update() -> None:
    counter = Counter("lane_tally_read_test", "a counter on the default registry", ["k"])
    try:
        child = Tallied(counter.labels(k="a"))
        for _ in range(5):
            child.inc()
        assert counter.labels(k="a")._value.get() == 0  # still pending: no lock taken per update
        assert REGISTRY.get_sample_value("lane_tally_read_test_total", {"k": "a"}) == 5
    finally:
        REGISTRY.unregister(counter)


async def test_pending_updates_reach_the_metric_within_the_flush_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """What another worker's /metrics (multiprocess files) relies on: no read of this registry needed."""
    metric_tally.flush()
    monkeypatch.setattr(metric_tally, "FLUSH_AFTER_SECONDS", 0.05)
    counter, gauge = _metrics(CollectorRegistry())
    hits, busy = Tallied(counter.labels(k="x")), Tallied(gauge)
    hits.inc()
    hits.inc(2)
    busy.inc()
    busy.inc()
    busy.dec()
    for _ in range(100):  # bounded: 100 x 20 ms
        if counter.labels(k="x")._value.get() == 3:
            break
        await asyncio.sleep(0.02)
    assert counter.labels(k="x")._value.get() == 3
    assert gauge._value.get() == 1


def test_without_a_running_loop_updates_are_applied_at_once() -> None:
    counter, gauge = _metrics(CollectorRegistry())
    Tallied(counter.labels(k="y")).inc()
    Tallied(gauge).dec(4)
    assert counter.labels(k="y")._value.get() == 1
    assert gauge._value.get() == -4


async def test_flush_applies_everything_and_cancels_the_timer() -> None:
    counter, _ = _metrics(CollectorRegistry())
    child = Tallied(counter.labels(k="z"))
    child.inc()
    assert metric_tally._timer is not None
    metric_tally.flush()
    assert metric_tally._timer is None and counter.labels(k="z")._value.get() == 1
    child.inc()  # a new batch arms a new timer
    assert metric_tally._timer is not None
    metric_tally.flush()
    assert counter.labels(k="z")._value.get() == 2


def test_a_timer_left_on_a_closed_loop_does_not_hold_counts_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process (or test) that runs a second loop after the first closed still gets its counts handed over."""
    metric_tally.flush()
    monkeypatch.setattr(metric_tally, "FLUSH_AFTER_SECONDS", 0.05)
    counter, _ = _metrics(CollectorRegistry())
    child = Tallied(counter.labels(k="w"))

    async def one_update() -> None:
        child.inc()

    async def update_and_wait() -> float:
        child.inc()
        for _ in range(100):  # bounded: 100 x 20 ms
            if counter.labels(k="w")._value.get() >= 1:
                break
            await asyncio.sleep(0.02)
        return float(counter.labels(k="w")._value.get())

    asyncio.run(one_update())  # arms a timer, then the loop closes before it fires
    assert counter.labels(k="w")._value.get() == 0
    assert asyncio.run(update_and_wait()) == 2
