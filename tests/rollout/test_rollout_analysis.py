"""`rollout.metrics_window` and `rollout.analysis`: a step judged from Prometheus text, lane against base.

The exposition text is written by prometheus-client itself (a registry of this test holding the
proxies' two metrics with their labels), then parsed as `lane rollout` parses a proxy's /metrics.
The end-to-end runs against real proxies are in test_rollout_demo.py.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from rollout.analysis import Thresholds, Verdict, judge
from rollout.metrics_window import parse_metrics

LABELS = ["proxy", "source_service", "source_lane", "destination_service", "requested_lane", "served_lane"]
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Proxies:
    """The metrics of a few proxies, as a registry of prometheus-client's."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lane_requests", "requests", [*LABELS, "fallback", "response_code"], registry=self.registry
        )
        self.duration = Histogram(
            "lane_request_duration_seconds",
            "seconds",
            [*LABELS, "response_code"],
            buckets=BUCKETS,
            registry=self.registry,
        )

    def serve(
        self,
        proxy: str,
        service: str,
        requested: str,
        served: str,
        n: int,
        *,
        errors: int = 0,
        seconds: float = 0.003,
    ) -> None:
        for i in range(n):
            code = "500" if i < errors else "200"
            labels = (proxy, "gateway", "", service, requested, served)
            self.requests.labels(*labels, "", code).inc()
            self.duration.labels(*labels, code).observe(seconds)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


def chain(p: Proxies, gray: int, base: int, *, c_gray_errors: int = 0, c_gray_seconds: float = 0.003) -> None:
    """*gray* and *base* users through a -> b -> c; c@gray fails *c_gray_errors* (and so do their entries)."""
    p.serve("gateway", "a", "gray", "gray", gray, errors=c_gray_errors)
    p.serve("gateway", "a", "base", "base", base)
    p.serve("inbound", "a", "gray", "gray", gray, errors=c_gray_errors)
    p.serve("inbound", "a", "base", "base", base)
    p.serve(
        "inbound", "b", "gray", "base", gray, errors=c_gray_errors
    )  # b has no gray: base serves gray users
    p.serve("inbound", "b", "base", "base", base)
    p.serve("inbound", "c", "gray", "gray", gray, errors=c_gray_errors, seconds=c_gray_seconds)
    p.serve("inbound", "c", "base", "base", base)


LIMITS = Thresholds(max_error_rate=0.01, max_p99_ratio=2.0, min_p99=0.025, min_requests=20)


def test_only_the_window_is_judged_not_what_earlier_steps_saw() -> None:
    p = Proxies()
    chain(p, gray=100, base=100, c_gray_errors=30)  # a bad earlier window
    before = parse_metrics([p.text()])
    chain(p, gray=50, base=200)  # a clean window since
    verdict = judge(parse_metrics([p.text()]).since(before), "gray", "base", LIMITS)
    assert verdict.verdict is Verdict.PASS and verdict.entry_requests == 50


def test_a_bad_gray_instance_deep_in_the_chain_fails_the_step_and_is_named() -> None:
    p = Proxies()
    before = parse_metrics([p.text()])
    chain(p, gray=100, base=400, c_gray_errors=20)
    verdict = judge(parse_metrics([p.text()]).since(before), "gray", "base", LIMITS)
    assert verdict.verdict is Verdict.FAIL
    assert "c@gray error rate 20.0% > 1.0%" in verdict.reason
    assert [c.where for c in verdict.checks] == ["entry", "a", "c"]  # b served no gray: not a gray check


def test_too_few_gray_requests_wait_even_when_they_fail() -> None:
    p = Proxies()
    before = parse_metrics([p.text()])
    chain(p, gray=19, base=1000, c_gray_errors=19)
    verdict = judge(parse_metrics([p.text()]).since(before), "gray", "base", LIMITS)
    assert verdict.verdict is Verdict.WAIT and "fewer than --min-requests 20" in verdict.reason


def test_an_error_rate_base_shares_is_not_the_lanes_fault() -> None:
    p = Proxies()
    p.serve("gateway", "a", "gray", "gray", 100, errors=10)
    p.serve("gateway", "a", "base", "base", 100, errors=10)
    assert judge(parse_metrics([p.text()]), "gray", "base", LIMITS).verdict is Verdict.PASS


def test_p99_fails_over_the_ratio_but_not_under_the_floor() -> None:
    slow = Proxies()
    chain(slow, gray=100, base=100, c_gray_seconds=0.3)
    verdict = judge(parse_metrics([slow.text()]), "gray", "base", LIMITS)
    assert verdict.verdict is Verdict.FAIL and "c@gray p99" in verdict.reason
    (c,) = [check for check in verdict.checks if check.where == "c"]
    assert c.p99 is not None and 0.25 < c.p99 <= 0.5 and c.base_p99 is not None and c.base_p99 <= 0.005
    fast = Proxies()  # 4x slower, but 12 ms: noise, never a failure
    chain(fast, gray=100, base=100, c_gray_seconds=0.012)
    assert judge(parse_metrics([fast.text()]), "gray", "base", LIMITS).verdict is Verdict.PASS


def test_sidecars_are_summed_and_the_older_label_names_are_read() -> None:
    old = Counter(
        "lane_requests",
        "r",
        ["proxy", "service", "requested_lane", "served_lane", "fallback", "status"],
        registry=(registry := CollectorRegistry()),
    )
    old.labels("gateway", "a", "gray", "gray", "", "200").inc(30)
    old.labels("gateway", "a", "gray", "gray", "", "503").inc(10)
    p = Proxies()
    p.serve("inbound", "c", "gray", "gray", 10, errors=1)
    snapshot = parse_metrics([generate_latest(registry).decode(), p.text(), p.text()])
    entry = snapshot.total(proxy="gateway", requested="gray")
    assert (entry.requests, entry.errors) == (40, 10)
    c = snapshot.total(proxy="inbound", service="c", served="gray")
    assert (c.requests, c.errors) == (20, 2)  # two sidecars of c@gray
    assert snapshot.has_durations and entry.quantile(0.99) is None  # no histogram for the old rows


def test_a_reset_counter_counts_all_of_its_traffic_as_new() -> None:
    p = Proxies()
    chain(p, gray=100, base=100)
    before = parse_metrics([p.text()])
    restarted = Proxies()  # the gateway restarted: its counters begin again
    chain(restarted, gray=30, base=30)
    window = parse_metrics([restarted.text()]).since(before)
    assert window.total(proxy="gateway", requested="gray").requests == 30
