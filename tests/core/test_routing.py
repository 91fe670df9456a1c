"""The pure routing decision, passive health and trace-id recovery: the rules the data plane lives by."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from lane.core.config import LaneConfig
from lane.core.config_load import parse_config
from lane.core.endpoint import Endpoint
from lane.core.errors import UpstreamUnavailable
from lane.core.hops import FallbackReason, Hop
from lane.core.routing import choose_upstream
from lane.dataplane.health import PassiveHealth
from lane.dataplane.registry import Registry
from lane.dataplane.trace_cache import AMBIGUOUS_TRACE_IDS, TraceCache, trace_keys
from lane.sidecar.hop_collector import HopCollector

CONFIG = """
lanes:
  gray: {fallback: base}
  canary: {fallback: gray}
  locked: {strict: true}
entry: a
services:
  a:
    instances:
      base: ["10.0.0.1:80", "10.0.0.2:80"]
      gray: ["10.0.1.1:80"]
      locked: ["10.0.2.1:80"]
  b:
    instances:
      base: ["10.1.0.1:80"]
  c:
    instances:
      base: ["10.2.0.1:80"]
      gray: ["10.2.1.1:80"]
  ext:
    host: ext.example.svc
    port: 8080
    selector: {app: ext}
"""


@pytest.fixture
def config() -> LaneConfig:
    return parse_config(CONFIG, "test.yaml")


def ep(text: str) -> Endpoint:
    host, port = text.rsplit(":", 1)
    return Endpoint(host, int(port))


def test_the_requested_lane_is_served_when_it_has_instances(config: LaneConfig) -> None:
    route = choose_upstream(config, "a", "gray")
    assert (route.lane, route.upstreams, route.reason, route.fell_back) == ("gray", (ep("10.0.1.1:80"),), None, False)
    assert choose_upstream(config, "a", "base").upstreams == (ep("10.0.0.1:80"), ep("10.0.0.2:80"))


def test_a_service_without_the_lane_falls_back_with_no_instance(config: LaneConfig) -> None:
    route = choose_upstream(config, "b", "gray")
    assert (route.requested, route.lane, route.reason) == ("gray", "base", FallbackReason.NO_INSTANCE)
    assert route.fell_back


def test_the_chain_is_walked_in_order(config: LaneConfig) -> None:
    assert choose_upstream(config, "c", "canary").lane == "gray"  # canary -> gray, c has gray
    route = choose_upstream(config, "b", "canary")
    assert (route.lane, route.reason) == ("base", FallbackReason.NO_INSTANCE)


def test_ejected_instances_are_skipped_and_the_reason_is_unhealthy(config: LaneConfig) -> None:
    def available(service: str, lane: str) -> tuple[Endpoint, ...]:
        return () if (service, lane) == ("c", "gray") else config.services[service].instances.get(lane, ())

    route = choose_upstream(config, "c", "gray", available)
    assert (route.lane, route.reason) == ("base", FallbackReason.UNHEALTHY)
    partly = choose_upstream(config, "a", "base", lambda s, lane: (ep("10.0.0.2:80"),) if lane == "base" else ())
    assert partly.upstreams == (ep("10.0.0.2:80"),) and partly.reason is None


def test_instances_that_failed_to_connect_are_not_retried_in_the_same_request(config: LaneConfig) -> None:
    route = choose_upstream(config, "c", "gray", failed=[ep("10.2.1.1:80")])
    assert (route.lane, route.reason) == ("base", FallbackReason.CONNECT_FAILED)
    route = choose_upstream(config, "a", "base", failed=[ep("10.0.0.1:80")])
    assert route.upstreams == (ep("10.0.0.2:80"),) and not route.fell_back
    # the failure just ejected it too: still reported as what happened in this request
    ejected = choose_upstream(config, "c", "gray", lambda s, lane: () if lane == "gray" else
                              config.services[s].instances.get(lane, ()), failed=[ep("10.2.1.1:80")])
    assert ejected.reason is FallbackReason.CONNECT_FAILED


def test_a_strict_lane_never_falls_back(config: LaneConfig) -> None:
    assert choose_upstream(config, "a", "locked").lane == "locked"
    with pytest.raises(UpstreamUnavailable, match="strict") as info:
        choose_upstream(config, "b", "locked")
    assert info.value.reason.startswith("lane locked is strict")
    with pytest.raises(UpstreamUnavailable, match="strict"):
        choose_upstream(config, "a", "locked", failed=[ep("10.0.2.1:80")])


def test_when_every_lane_is_ejected_the_last_one_is_tried_anyway(config: LaneConfig) -> None:
    nothing: Callable[[str, str], tuple[Endpoint, ...]] = lambda s, lane: ()
    route = choose_upstream(config, "c", "gray", nothing)
    assert (route.lane, route.upstreams, route.reason, route.panic) == (
        "base", (ep("10.2.0.1:80"),), FallbackReason.UNHEALTHY, True)
    route = choose_upstream(config, "a", "base", nothing, failed=[ep("10.0.0.1:80")])
    assert route.upstreams == (ep("10.0.0.2:80"),) and route.panic and route.reason is None
    assert not choose_upstream(config, "a", "base").panic
    with pytest.raises(UpstreamUnavailable):  # what failed in this very request is not tried again
        choose_upstream(config, "b", "base", nothing, failed=[ep("10.1.0.1:80")])
    assert choose_upstream(config, "a", "locked", nothing).lane == "locked"  # a strict lane stays itself


def test_nothing_left_in_the_chain_is_unavailable(config: LaneConfig) -> None:
    with pytest.raises(UpstreamUnavailable, match="no usable instance"):
        choose_upstream(config, "b", "gray", failed=[ep("10.1.0.1:80")])
    with pytest.raises(UpstreamUnavailable, match="not a service"):
        choose_upstream(config, "nope", "base")


def test_an_undeclared_lane_goes_to_the_default_lane(config: LaneConfig) -> None:
    route = choose_upstream(config, "a", "feature-x")
    assert (route.requested, route.lane, route.reason) == ("feature-x", "base", FallbackReason.NO_INSTANCE)


def test_a_selector_only_service_is_reached_at_its_cluster_address(config: LaneConfig) -> None:
    route = choose_upstream(config, "ext", "base")
    assert route.upstreams == (Endpoint("ext.example.svc", 8080),) and not route.fell_back


def test_consecutive_failures_eject_then_the_instance_is_tried_again() -> None:
    now = [100.0]
    ejected: list[Endpoint] = []
    health = PassiveHealth(3, 5.0, clock=lambda: now[0], on_eject=ejected.append)
    e = ep("127.0.0.1:1")
    assert not health.record_failure(e) and not health.record_failure(e)
    health.record_success(e)  # a success resets the count
    assert not health.record_failure(e) and not health.record_failure(e)
    assert health.record_failure(e) and ejected == [e]
    assert not health.is_available(e)
    now[0] += 5.0
    assert health.is_available(e)  # tried again after eject_seconds
    assert health.record_failure(e)  # on probation: one failure ejects again
    now[0] += 5.0
    health.record_success(e)
    assert health.is_available(e) and health.snapshot(e).healthy


def test_registry_view_and_round_robin(config: LaneConfig) -> None:
    registry = Registry(config)
    upstreams = config.services["a"].instances["base"]
    assert {registry.pick(upstreams) for _ in range(4)} == set(upstreams)
    for _ in range(config.proxy.eject_after_failures):
        registry.health.record_failure(ep("10.2.1.1:80"))
    view = registry.view()
    assert view["c"]["gray"][0]["instance"] == "10.2.1.1:80" and view["c"]["gray"][0]["healthy"] is False
    assert choose_upstream(config, "c", "gray", registry.available_in(config)).reason is FallbackReason.UNHEALTHY


def test_registry_routes_follow_health_failures_and_reloads(config: LaneConfig) -> None:
    now = [0.0]
    registry = Registry(config, clock=lambda: now[0])
    assert registry.route(config, "c", "gray") == choose_upstream(config, "c", "gray")
    assert registry.route(config, "c", "gray").lane == "gray"  # again, now from the cache
    assert registry.route(config, "c", "gray", [ep("10.2.1.1:80")]).reason is FallbackReason.CONNECT_FAILED
    for _ in range(config.proxy.eject_after_failures):
        registry.health.record_failure(ep("10.2.1.1:80"))
    assert registry.route(config, "c", "gray").reason is FallbackReason.UNHEALTHY
    now[0] += config.proxy.eject_seconds  # the ejection is over: gray serves again
    assert registry.route(config, "c", "gray").lane == "gray"
    assert registry.route(config, "c", "no-such-lane").lane == "base"  # undeclared lanes route like the default
    with pytest.raises(UpstreamUnavailable):
        registry.route(config, "a", "locked", [ep("10.0.2.1:80")])
    reloaded = parse_config(CONFIG.replace('gray: ["10.2.1.1:80"]', 'gray: ["10.2.1.9:80"]'), "test.yaml")
    registry.swap(reloaded)
    assert registry.route(reloaded, "c", "gray").upstreams == (ep("10.2.1.9:80"),)
    assert registry.route(config, "c", "gray").upstreams == (ep("10.2.1.1:80"),)  # an in-flight snapshot


@pytest.mark.parametrize(("name", "value", "key"), [
    ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
     ("trace", "0af7651916cd43dd8448eb211c80319c")),
    ("x-request-id", "abc-123", ("request", "abc-123")),
    ("x-b3-traceid", "80F198EE56343BA864FE8B2A57D3EFF7", ("trace", "80f198ee56343ba864fe8b2a57d3eff7")),
    ("b3", "80f198ee56343ba8-e457b5a2e4d86bd1-1", ("trace", "000000000000000080f198ee56343ba8")),
    ("uber-trace-id", "0000abc%3A1%3A0%3A1", ("trace", "abc".zfill(32))),
    ("sw8", "1-TRACEID-SEGMENT-3-c2VydmljZQ==-aW5zdGFuY2U=-L2dldA==-ZXhhbXBsZQ==", ("sw8", "TRACEID")),
    ("sw8", "1-MGFmNzY1MTkxNmNkNDNkZDg0NDhlYjIxMWM4MDMxOWM=-U0VH-3-c2VydmljZQ==-aW5zdGFuY2U=-L2dldA==-ZXhhbXBsZQ==",
     ("trace", "0af7651916cd43dd8448eb211c80319c")),
    ("x-cloud-trace-context", "105445aa7843bc8bf206b12000100000/1;o=1", ("x-cloud-trace-context",
                                                                          "105445aa7843bc8bf206b12000100000")),
])
def test_trace_keys_take_the_trace_id_not_the_span_id(name: str, value: str, key: tuple[str, str]) -> None:
    """Formats that carry the same 128-bit trace id share one key, so a request is one cache entry."""
    assert trace_keys([(name.upper(), value)], [name]) == [key]


def test_trace_keys_skip_garbage_and_keep_the_configured_order() -> None:
    headers = [("x-request-id", "r1"), ("traceparent", "not-a-traceparent"), ("x-b3-traceid", "b1"),
               ("x-request-id", " r1"), ("x-request-id-2", "x" * 500)]
    assert trace_keys(headers, ["x-b3-traceid", "traceparent", "x-request-id"]) == [
        ("trace", "b1".zfill(32)), ("request", "r1")]
    assert trace_keys([("x-request-id", "x" * 500)], ["x-request-id"]) == []


def test_a_trace_header_sent_twice_with_different_values_is_no_key() -> None:
    """Which of two values an app keeps is the app's choice: a smuggled second id must not recover a lane."""
    gray = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    mine = "00-11111111111111111111111111111111-b7ad6b7169203331-01"
    pairs = [("traceparent", mine), ("x-request-id", "r1"), ("traceparent", gray)]
    names = ["traceparent", "x-request-id"]
    assert trace_keys(pairs, names) == [("request", "r1")]
    assert trace_keys(CIMultiDictProxy(CIMultiDict(pairs)), names) == [("request", "r1")]
    assert trace_keys([("traceparent", gray), ("traceparent", gray)], names) == [
        ("trace", "0af7651916cd43dd8448eb211c80319c")]  # the same value twice is still one id


def test_trace_keys_read_a_request_multidict_like_its_header_pairs() -> None:
    pairs = [("X-Request-Id", "r1"), ("TraceParent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
             ("x-request-id", "r1"), ("X-B3-TraceId", "bad id")]
    names = ["X-B3-TraceId", "x-request-id", "traceparent"]
    expected = [("request", "r1"), ("trace", "0af7651916cd43dd8448eb211c80319c")]
    assert trace_keys(pairs, names) == expected
    assert trace_keys(CIMultiDictProxy(CIMultiDict(pairs)), names) == expected


def test_trace_key_sources_of_a_multidict_and_of_its_pairs_agree_on_generated_heads() -> None:
    """The sidecar reads a request's multidict (one lookup per configured name); the pair form is the
    reference: on 3,000 generated mixes (case, whitespace, repeats, conflicts, garbage) both give the same."""
    import random

    from lane.dataplane.trace_cache import trace_key_sources

    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    pool = [("traceparent", tp), ("TraceParent", f" {tp} "), ("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01"),
            ("traceparent", "junk"), ("x-request-id", "r1"), ("X-Request-ID", "r1 "), ("x-request-id", "r2"),
            ("x-request-id", ""), ("b3", "0af7651916cd43dd-b7ad6b7169203331"), ("B3", "0"),
            ("x-b3-traceid", "0af7651916cd43dd8448eb211c80319c"), ("x-my-id", "abc"), ("host", "a")]
    names = ["traceparent", "x-request-id", "b3", "x-b3-traceid", "X-My-Id", "traceparent"]
    rng = random.Random(11)
    for _ in range(3000):
        pairs = rng.sample(pool, rng.randint(0, 6))
        assert trace_key_sources(CIMultiDict(pairs), names) == trace_key_sources(pairs, names), pairs


def test_trace_cache_is_bounded_in_size_and_time() -> None:
    now = [0.0]
    cache = TraceCache(2, 10.0, clock=lambda: now[0])
    cache.remember([("x-request-id", "1")], "gray")
    cache.remember([("x-request-id", "2")], "base")
    assert cache.recall([("x-request-id", "1")]) == "gray"  # touch 1, so 2 is the oldest
    cache.remember([("x-request-id", "3")], "gray")
    assert len(cache) == 2 and cache.recall([("x-request-id", "2")]) is None
    now[0] = 10.0
    assert cache.recall([("x-request-id", "1"), ("x-request-id", "3")]) is None


def test_trace_cache_keys_expire_at_most_one_tick_early_never_late() -> None:
    now = [100.0]
    cache = TraceCache(100, 10.0, clock=lambda: now[0])
    cache.remember([("request", "a")], "gray")
    now[0] = 100.01  # the same tick (1/64 s): shares a's value, so a's expiry
    cache.remember([("request", "b")], "gray")
    cache.remember([("request", "c")], "base")  # another lane: its own value
    now[0] = 100.02  # the next tick: a fresh value
    cache.remember([("request", "d")], "gray")
    now[0] = 109.999
    assert [cache.recall([("request", k)]) for k in "abcd"] == ["gray", "gray", "base", "gray"]
    now[0] = 110.0  # b goes 0.01 s early (one tick at most); c and d live their full TTL
    assert [cache.recall([("request", k)]) for k in "abcd"] == [None, None, "base", "gray"]
    now[0] = 110.02
    assert [cache.recall([("request", k)]) for k in "cd"] == [None, None]


def test_a_full_trace_cache_shares_its_values_and_stays_small() -> None:
    """What a sidecar grows by under load (issue 17's RSS goal): 10,000 keys cost the table, not a value each."""
    import tracemalloc

    keys = [("trace", f"{i:032x}") for i in range(10_000)]
    now = [0.0]
    cache = TraceCache(10_000, 60.0, clock=lambda: now[0])
    tracemalloc.start()
    try:
        for i, key in enumerate(keys):
            now[0] = i / 3000  # 3,000 requests a second, two lanes
            cache.put(key, "gray" if i % 2 else "base")
        used = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(cache) == 10_000
    assert used / 10_000 < 110, f"{used / 10_000:.0f} bytes a key"  # ~75; a value of its own per key: ~155


def test_the_trace_cache_keeps_its_shared_values_bounded_whatever_lanes_callers_name() -> None:
    cache = TraceCache(100, 10.0, clock=lambda: 0.0)
    for i in range(1000):
        cache.put(("request", str(i)), f"lane-{i}")
    assert len(cache._stamps) <= 64 and len(cache) == 100
    assert cache.recall([("request", "999")]) == "lane-999"


def _ambiguous_count(store: str) -> float:
    return AMBIGUOUS_TRACE_IDS.labels(store=store)._value.get()


def test_a_trace_id_remembered_in_two_lanes_recovers_neither_until_it_expires() -> None:
    now = [0.0]
    cache = TraceCache(100, 10.0, clock=lambda: now[0])
    shared, own = ("traceparent", "0af7651916cd43dd8448eb211c80319c"), ("x-request-id", "r-base")
    before = _ambiguous_count("trace_cache")
    cache.remember([shared], "gray")
    cache.remember([shared], "gray")  # the same lane again is no conflict
    assert cache.recall([shared]) == "gray" and _ambiguous_count("trace_cache") == before
    cache.remember([shared, own], "base")
    assert cache.recall([shared]) is None  # not whichever lane came last
    assert cache.recall([shared, own]) == "base"  # the next key decides
    assert _ambiguous_count("trace_cache") == before + 1
    cache.remember([shared], "gray")
    cache.remember([shared], "base")  # still ambiguous: counted once
    assert cache.recall([shared]) is None and _ambiguous_count("trace_cache") == before + 1
    now[0] = 10.0  # the TTL since the last claim ran out: the id is free again
    cache.remember([shared], "gray")
    assert cache.recall([shared]) == "gray"


def test_a_trace_id_two_open_collections_claim_collects_for_neither() -> None:
    collector = HopCollector()
    shared = ("traceparent", "0af7651916cd43dd8448eb211c80319c")
    before = _ambiguous_count("hop_collector")
    with collector.collect([shared, ("x-request-id", "1")]) as one:
        assert collector.find([shared]) is one
        with collector.collect([shared, ("x-request-id", "2")]) as two:
            assert collector.find([shared]) is None
            assert collector.find([shared, ("x-request-id", "2")]) is two
            assert collector.find([shared, ("x-request-id", "1")]) is one
        assert collector.find([shared]) is None  # a late call may still be two's: stays ambiguous
        assert _ambiguous_count("hop_collector") == before + 1
    with collector.collect([shared]) as three:
        assert collector.find([shared]) is three  # free again once both closed


def test_hops_are_collected_in_call_start_order() -> None:
    collector = HopCollector()
    keys = [("x-request-id", "t")]
    with collector.collect(keys) as collection:
        found = collector.find([("traceparent", "other"), *keys])
        assert found is collection
        first, second = found.reserve(), found.reserve()
        found.fill(second, [Hop("d", "base", "gray")])
        found.fill(first, [Hop("b", "base", "gray"), Hop("c", "gray", "gray")])
        assert [h.label() for h in collection.hops()] == ["b@base", "c@gray", "d@base"]
    assert collector.find(keys) is None and len(collector) == 0


def test_a_collection_is_unregistered_when_its_block_fails_and_a_full_collector_hands_out_loose_ones() -> None:
    collector = HopCollector(max_open=1)
    keys = [("request", "r1")]
    made = collector.collect(keys)
    assert collector.find(keys) is None and len(collector) == 0  # made, not entered: nothing registered yet
    with made:
        assert collector.find(keys) is made
    with pytest.raises(RuntimeError), collector.collect(keys) as collection:
        assert collector.find(keys) is collection and len(collector) == 1
        raise RuntimeError("the app's answer failed")
    assert collector.find(keys) is None and len(collector) == 0
    with collector.collect(keys) as first, collector.collect([("request", "r2")]) as loose:
        assert collector.find([("request", "r2")]) is None  # over max_open: not registered, still usable
        loose.fill(loose.reserve(), [Hop("b", "base", "gray")])
        assert [h.label() for h in loose.hops()] == ["b@base"] and collector.find(keys) is first
    assert len(collector) == 0


def test_the_trace_cache_keeps_the_model_of_lru_ttl_and_ambiguity_on_random_requests() -> None:
    """`remember` stores a request's keys in one step (one clock read, one shared value); the reference is
    the cache's definition, key by key: a live key claimed by another lane is ambiguous until it expires,
    expired keys are gone, the least recently used go first once the request's keys are in."""
    import random
    from collections import OrderedDict

    rng = random.Random(11)
    now = [0.0]
    cache = TraceCache(6, 5.0, clock=lambda: now[0])
    model: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
    keys = [("trace", f"{i:032x}") for i in range(9)] + [("request", str(i)) for i in range(4)]
    for _ in range(4000):
        if rng.random() < 0.3:
            now[0] += rng.choice((1.0, 1.0, 3.0, 6.0))  # whole seconds: every value is fresh (no shared tick)
        request = rng.sample(keys, rng.choice((1, 2, 2, 3)))
        if rng.random() < 0.5:
            lane = rng.choice(("base", "gray", "blue"))
            cache.remember(request, lane)
            for key in request:
                known = model.get(key)
                claimed = known is not None and known[1] > now[0] and known[0] != lane
                model[key] = ("" if claimed else lane, now[0] + 5.0)
                model.move_to_end(key)
            while len(model) > 6:
                model.popitem(last=False)
        else:
            expected = None
            for key in request:
                item = model.get(key)
                if item is not None and item[1] <= now[0]:
                    del model[key]
                elif item is not None:
                    model.move_to_end(key)
                    if item[0]:
                        expected = item[0]
                        break
            assert cache.recall(request) == expected, (request, now[0])
        assert list(cache._data) == list(model)
