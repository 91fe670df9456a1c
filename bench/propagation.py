"""What carrying the lane costs per request: lane's propagation next to OpenTelemetry's stock one.

A microbenchmark in one process (``timeit``: each case is run in batches sized to ~0.2 s, several
repetitions, the median reported in nanoseconds per operation). The clock is the process's CPU
time, not the wall clock: on a machine shared with other work, time spent descheduled would
otherwise land on whichever case happened to run then. One operation is the per-request
work of reading the lane (and trace) from an incoming request and writing it onto the next one,
on the same realistic carrier: a ``CIMultiDict`` with a ``traceparent``, a ``baggage`` of three
members (one of them the lane), the tag header and a dozen ordinary headers.

Cases (ratios are to the first, the OpenTelemetry stock pair):

* ``otel tracecontext+baggage``: `TraceContextTextMapPropagator` and `W3CBaggagePropagator`
  extract into a context, then inject into a new (empty) outgoing carrier;
* ``lane propagator``: `lane.propagation.propagator.LanePropagator`, the same extract + inject;
* ``otel + lane composite``: ``OTEL_PROPAGATORS=tracecontext,baggage,lane`` as an app runs it;
* ``lane.core.wire (sidecar)``: what the proxies do: `request_lane` on the incoming headers, then
  `strip_lane` + `set_lane` on the copy that is forwarded; the copy itself is the next row;
* ``copy headers``: ``CIMultiDict(incoming)`` alone, the part of the sidecar row every proxy pays
  anyway.

Before timing, every case is checked once to really carry the lane (and the trace), so a case
cannot get fast by doing nothing.

    python bench/propagation.py [--repeat 7] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from multidict import CIMultiDict
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from lane.core.tags import TagSpec
from lane.core.wire import request_lane, set_lane, strip_lane
from lane.propagation.propagator import LanePropagator

__all__ = ["Case", "Result", "carrier", "cases", "main", "measure"]

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
BAGGAGE = "x-mse-tag=gray,userId=alice%20smith,sessionId=5f3c9a1e-77b1-4a5e-9f00-0c1d2e3f4a5b"
OTHER_HEADERS = (
    ("Host", "b.default.svc.cluster.local:8080"), ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) demo/1.0"),
    ("Accept", "application/json, text/plain, */*"), ("Accept-Encoding", "gzip, deflate, br"),
    ("Accept-Language", "en-US,en;q=0.9,zh-CN;q=0.8"), ("Content-Type", "application/json"),
    ("Content-Length", "128"), ("X-Request-Id", "0f8fad5b-d9cb-469f-a165-70867728950e"),
    ("X-Forwarded-For", "203.0.113.7, 10.0.0.12"), ("X-Forwarded-Proto", "https"),
    ("Cookie", "session=9a8b7c6d5e4f; theme=dark"), ("Authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2ln"),
)


def carrier() -> CIMultiDict[str]:
    """The incoming request's headers: 12 ordinary ones, the tag, a traceparent and a baggage."""
    headers: CIMultiDict[str] = CIMultiDict(OTHER_HEADERS)
    headers["traceparent"] = TRACEPARENT
    headers["baggage"] = BAGGAGE
    headers["x-mse-tag"] = "gray"
    return headers


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    run: Callable[[], Any]  # one operation
    check: Callable[[Any], bool]  # is what one operation returned right?


def _carries_trace_and_lane(out: CIMultiDict[str]) -> bool:
    return out.get("traceparent", "").split("-")[1:2] == [TRACEPARENT.split("-")[1]] and "x-mse-tag=gray" in \
        out.get("baggage", "")


def cases() -> list[Case]:
    incoming, tag = carrier(), TagSpec()
    trace, baggage, lane = TraceContextTextMapPropagator(), W3CBaggagePropagator(), LanePropagator()
    composite = CompositePropagator([trace, baggage, lane])

    def otel() -> CIMultiDict[str]:
        ctx = baggage.extract(incoming, context=trace.extract(incoming))
        out: CIMultiDict[str] = CIMultiDict()
        trace.inject(out, ctx)
        baggage.inject(out, ctx)
        return out

    def lane_propagator() -> CIMultiDict[str]:
        out: CIMultiDict[str] = CIMultiDict()
        lane.inject(out, lane.extract(incoming))
        return out

    def otel_and_lane() -> CIMultiDict[str]:
        out: CIMultiDict[str] = CIMultiDict()
        composite.inject(out, composite.extract(incoming))
        return out

    def sidecar() -> CIMultiDict[str]:
        out = CIMultiDict(incoming)
        found = request_lane(incoming, tag)
        strip_lane(out, tag)
        if found is not None:
            set_lane(out, tag, found)
        return out

    def copy() -> CIMultiDict[str]:
        return CIMultiDict(incoming)

    return [
        Case("otel tracecontext+baggage", otel, _carries_trace_and_lane),
        Case("lane propagator", lane_propagator,
             lambda out: out.get("x-mse-tag") == "gray" and out.get("baggage") == "x-mse-tag=gray"),
        Case("otel + lane composite", otel_and_lane,
             lambda out: _carries_trace_and_lane(out) and out.get("x-mse-tag") == "gray"),
        Case("lane.core.wire (sidecar)", sidecar,
             lambda out: out.get("x-mse-tag") == "gray" and out.get("baggage", "").startswith("x-mse-tag=gray,")
             and out.get("traceparent") == TRACEPARENT and len(out) == len(incoming)),
        Case("copy headers", copy, lambda out: len(out) == len(incoming)),
    ]


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    ns_per_op: tuple[float, ...]  # one per repetition

    @property
    def median(self) -> float:
        return statistics.median(self.ns_per_op)


def measure(case: Case, repeat: int, batch_seconds: float) -> Result:
    """Median-ready ns/op of *case*: *repeat* batches of a size that takes about *batch_seconds*."""
    if not case.check(case.run()):
        raise RuntimeError(f"{case.name}: one operation does not carry the lane (and trace) it should")
    timer = timeit.Timer(case.run, timer=time.process_time)
    number, took = 1, 0.0
    while took < batch_seconds / 4 and number < 10_000_000:  # bounded: grows until a batch is measurable
        took = timer.timeit(number)
        number *= 4
    number = max(1, int(number / 4 * batch_seconds / max(took, 1e-9)))
    return Result(case.name, tuple(t / number * 1e9 for t in timer.repeat(repeat=repeat, number=number)))


def table(results: list[Result], repeat: int) -> str:
    base = results[0].median
    rows = [f"{'per request: extract + inject':<30} {'median ns':>10} {'min ns':>9} {'vs otel':>8}"]
    rows += [f"{r.name:<30} {r.median:>10,.0f} {min(r.ns_per_op):>9,.0f} {r.median / base:>7.2f}x" for r in results]
    head = (f"lane propagation microbenchmark: {repeat} repetitions, median ns/op, Python {platform.python_version()}; "
            "carrier: traceparent, 3-member baggage, tag header, 12 other headers")
    return "\n".join([head, "", *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed batches per case (default 7)")
    parser.add_argument("--batch-seconds", type=float, default=0.2, help="about how long one batch runs (default 0.2)")
    parser.add_argument("--quick", action="store_true", help="3 short batches per case (a smoke run, ~1 s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.batch_seconds = 3, 0.03
    if not 1 <= args.repeat <= 100 or not 0.001 <= args.batch_seconds <= 10:
        parser.error("--repeat must be 1..100 and --batch-seconds 0.001..10")
    results = [measure(case, args.repeat, args.batch_seconds) for case in cases()]
    if args.json:
        base = results[0].median
        print(json.dumps({
            "python": platform.python_version(), "repeat": args.repeat, "baseline": results[0].name,
            "cases": {r.name: {**asdict(r), "median_ns": r.median, "ratio": r.median / base} for r in results},
        }, indent=2))
    else:
        print(table(results, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
