"""lane/telemetry/metric_tally.py: batched metric updates lose nothing and are never read stale."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from lane.telemetry import metric_tally
from lane.telemetry.metric_tally import Tallied, TalliedHistogram


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


def test_a_tallied_histogram_hands_over_what_observe_would_have_recorded() -> None:
    """The batched handover writes prometheus-client's internals; this fails if an upgrade changes them."""
    bounds = (0.001, 0.01, 0.1, 1.0)
    registry = CollectorRegistry()
    direct = Histogram("tally_direct_seconds", "observed one by one", ["k"], buckets=bounds, registry=registry)
    batched = Histogram("tally_batched_seconds", "observed through the tally", ["k"], buckets=bounds,
                        registry=registry)
    counter = Counter("tally_counted", "one per observation", ["k"], registry=registry)
    tallied = TalliedHistogram(batched.labels(k="a"), bounds, counted=counter.labels(k="a"))
    values = [0.0, 0.0005, 0.001, 0.002, 0.01, 0.05, 0.5, 1.0, 3.0, 30.0]
    for value in values:
        direct.labels(k="a").observe(value)
        tallied.observe(value)
    metric_tally.flush()

    def samples(name: str) -> list[tuple[str, str, float]]:
        return [(s.name.removeprefix(name), s.labels.get("le", ""), s.value)
                for family in registry.collect() if family.name == name for s in family.samples]

    assert samples("tally_batched_seconds") == samples("tally_direct_seconds")
    assert registry.get_sample_value("tally_counted_total", {"k": "a"}) == len(values)
    tallied.observe(0.2)  # the next batch starts from zero and adds on
    metric_tally.flush()
    assert registry.get_sample_value("tally_batched_seconds_count", {"k": "a"}) == len(values) + 1


def test_a_tallied_histogram_refuses_bounds_that_do_not_match_the_histogram() -> None:
    histogram = Histogram("tally_mismatch_seconds", "three bounds", buckets=(0.1, 1.0, 10.0),
                          registry=CollectorRegistry())
    with pytest.raises(TypeError):
        TalliedHistogram(histogram, (0.1, 1.0))


def test_a_request_is_counted_under_its_declared_lanes_and_undeclared_ones_under_one_label() -> None:
    """A lane name a client made up must not become a label value of its own (unbounded series); a lane
    no one served (an error answer) is the empty label."""
    from time import perf_counter

    from lane.core.config_load import parse_config
    from lane.telemetry.metrics import observe_request

    config = parse_config("""
lanes: {gray: {fallback: base}}
entry: a
services:
  a: {instances: {base: ["127.0.0.1:1"], gray: ["127.0.0.1:2"]}}
""")
    cases = [("gray", "base", "gray", "base"), ("made-up-7", "base", "undeclared", "base"),
             ("gray", None, "gray", ""), (None, "nope", "", "undeclared")]
    for requested, served, requested_label, served_label in cases:
        labels = {"proxy": "tally-test", "source_service": "gateway", "source_lane": "", "destination_service": "a",
                  "requested_lane": requested_label, "served_lane": served_label, "fallback": "", "response_code": "200"}
        before = REGISTRY.get_sample_value("lane_requests_total", labels) or 0
        observe_request(config, "tally-test", "a", requested, served, None, 200, started=perf_counter())
        assert REGISTRY.get_sample_value("lane_requests_total", labels) == before + 1, (requested, served)
