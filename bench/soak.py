"""Soak: does a `lane sidecar` hold its memory under steady traffic? RSS sampled every second.

The issue asks for a sidecar RSS of at most 42 MiB (0.6x Envoy) with the demo config and no
growth over a 5-minute soak. This starts, on 127.0.0.1 only, the demo topology's service ``b``
as a real ``lane sidecar`` (``base`` lane) in front of a real ``lane demo-app`` that calls ``c``
through the sidecar's outbound side, plus ``c``'s two instances (``base`` and ``gray``) as demo
apps. The demo config (examples/demo.yaml) is used with its addresses replaced by these.

A bounded client in this process (aiohttp, fixed concurrency, a hard cap on the total) then
drives, for ``--seconds``, half of its requests through the sidecar's inbound side (so the app's
call to ``c`` crosses the outbound side too) and half straight into the outbound side with
``Host: c``; every other request is tagged ``x-mse-tag: gray``, and every request has its own
``traceparent`` and ``x-request-id`` (the trace-id cache fills up to its bound, as in production).
Every answer is checked: status 200 and ``c`` answered from the requested lane.

Reported: the sidecar's RSS idle right after start and after the first 1,000 requests, then
start/peak/end of the soak, a least-squares slope over the second half (MiB/min) and a verdict
(growth over the second half below 1 MiB = no growth), requests, errors, wrong lanes. With
``--json`` one JSON object is printed; the JSON and an SVG line chart of RSS over time are also
written to ``--results`` (default bench/results/soak.json and soak-rss.svg).

    python bench/soak.py [--seconds 300 | --quick] [--concurrency 8] [--json] [--results DIR]

Every process is stopped at the end whatever happens (`lane.process.supervisor.Child`: SIGTERM, then
SIGKILL; they also die with this process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml
from svg_line import Line, Reference, render_line_chart

from lane.core.config_load import demo_config_text
from lane.demo.topology import free_port
from lane.process.supervisor import Child, lane_argv

__all__ = ["Sample", "Soak", "fit_slope", "main", "verdict"]

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024
TARGET_MIB = 42.0
GROWTH_LIMIT_MIB = 1.0  # over the second half: less than this is "no growth"
FIRST_REQUESTS = 1000  # default of --first-requests
MAX_TOTAL_REQUESTS = 5_000_000  # the hard cap on the client, whatever --seconds says


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Sample:
    seconds: float  # since the soak traffic started
    rss_mib: float
    requests: int  # answered so far


def fit_slope(samples: list[Sample]) -> float:
    """Least-squares slope of RSS over time, in MiB per minute (0 for fewer than two samples)."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mean_t = sum(s.seconds for s in samples) / n
    mean_r = sum(s.rss_mib for s in samples) / n
    var = sum((s.seconds - mean_t) ** 2 for s in samples)
    if var == 0:
        return 0.0
    cov = sum((s.seconds - mean_t) * (s.rss_mib - mean_r) for s in samples)
    return cov / var * 60


def verdict(samples: list[Sample]) -> tuple[float, float, str]:
    """(slope MiB/min, growth MiB, verdict) over the second half of the soak."""
    if not samples:
        return 0.0, 0.0, "no samples"
    half = samples[-1].seconds / 2
    second = [s for s in samples if s.seconds >= half]
    slope = fit_slope(second)
    growth = slope * (second[-1].seconds - second[0].seconds) / 60 if len(second) > 1 else 0.0
    return slope, growth, "no growth" if growth < GROWTH_LIMIT_MIB else "grows"


@dataclass
class Traffic:
    """What the client did and saw; shared by its workers."""

    requests: int = 0
    errors: int = 0
    wrong_lane: int = 0
    examples: list[str] = field(default_factory=list)  # the first few problems, for the report

    def problem(self, text: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(text)


class Soak:
    """The processes of one soak in a temporary directory; `stop` stops every one of them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[Child] = []
        self.ports = {name: free_port() for name in ("app-b", "c-base", "c-gray", "inbound", "outbound", "admin")}

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def config_text(self) -> str:
        """The demo config with its instances at these processes (a and d, never called, at c's base)."""
        document: dict[str, Any] = yaml.safe_load(demo_config_text())
        instances = {"a": {"base": "c-base", "gray": "c-base"}, "b": {"base": "inbound"},
                     "c": {"base": "c-base", "gray": "c-gray"}, "d": {"base": "c-base"}}
        for service, lanes in instances.items():
            spec = document["services"][service]["instances"]
            for lane in spec:
                spec[lane] = [self.address(lanes[lane])]
        return str(yaml.safe_dump(document, sort_keys=False))

    def child(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        ready = self.workdir / f"{name}.ready.json"
        child = Child(name, [*argv, "--ready-file", str(ready)], ready_file=ready,
                      log_file=self.workdir / f"{name}.log", env=env)
        self.children.append(child)
        return child

    async def start(self) -> Child:
        """Starts the apps and the sidecar; returns the sidecar once all are ready."""
        config = self.workdir / "demo.yaml"
        config.write_text(self.config_text(), encoding="utf-8")
        proxy_env = {"HTTP_PROXY": f"http://{self.address('outbound')}", "NO_PROXY": "", "no_proxy": ""}
        apps = [
            self.child("app-b", lane_argv("demo-app", "--service", "b", "--lane", "base", "--calls", "c",
                                          "--listen", self.address("app-b")), env=proxy_env),
            self.child("c-base", lane_argv("demo-app", "--service", "c", "--lane", "base",
                                           "--listen", self.address("c-base"))),
            self.child("c-gray", lane_argv("demo-app", "--service", "c", "--lane", "gray",
                                           "--listen", self.address("c-gray"))),
        ]
        sidecar = self.child("sidecar", lane_argv(
            "sidecar", "--config", str(config), "--service", "b", "--lane", "base", "--app", self.address("app-b"),
            "--listen", self.address("inbound"), "--outbound", self.address("outbound"),
            "--admin", self.address("admin"), "--drain-seconds", "1"))
        for child in [*apps, sidecar]:
            await child.start()
        for child in [*apps, sidecar]:
            await child.wait_ready(60)
        return sidecar

    async def stop(self) -> None:
        await asyncio.gather(*(child.stop(10) for child in self.children), return_exceptions=True)


def _lane_of_c(body: Any, via_inbound: bool) -> str | None:
    """The lane ``c`` answered from: nested in b's answer (inbound), or c's own answer (outbound)."""
    if not isinstance(body, dict):
        return None
    if via_inbound:
        calls = body.get("calls") or [{}]
        body = calls[0].get("answer") if isinstance(calls[0], dict) else None
        if not isinstance(body, dict):
            return None
    lane = body.get("lane")
    return lane if isinstance(lane, str) else None


async def drive(session: aiohttp.ClientSession, soak: Soak, traffic: Traffic, concurrency: int,
                keep_going: Callable[[], bool]) -> None:
    """*concurrency* workers sending requests while *keep_going()* and under the hard cap."""
    inbound, outbound = f"http://{soak.address('inbound')}/", f"http://{soak.address('outbound')}/"

    async def worker(index: int) -> None:
        sent = 0
        while keep_going() and traffic.requests < MAX_TOTAL_REQUESTS:
            via_inbound, gray = sent % 2 == 0, (sent // 2 + index) % 2 == 0
            sent += 1
            headers = {"traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01",
                       "x-request-id": secrets.token_hex(8)}
            if gray:
                headers["x-mse-tag"] = "gray"
            if not via_inbound:
                headers["Host"] = "c"
            try:
                async with session.get(inbound if via_inbound else outbound, headers=headers) as resp:
                    body = await resp.json(content_type=None) if resp.status == 200 else await resp.text()
                    status = resp.status
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                traffic.requests += 1
                traffic.errors += 1
                traffic.problem(f"{type(exc).__name__}: {exc}"[:200])
                continue
            traffic.requests += 1
            if status != 200:
                traffic.errors += 1
                traffic.problem(f"status {status}: {str(body)[:150]}")
            elif _lane_of_c(body, via_inbound) != ("gray" if gray else "base"):
                traffic.wrong_lane += 1
                traffic.problem(f"asked {'gray' if gray else 'base'}, c answered {_lane_of_c(body, via_inbound)}")

    await asyncio.gather(*(worker(i) for i in range(concurrency)))


def rss_mib(process: psutil.Process) -> float:
    return float(process.memory_info().rss) / MIB


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lane-soak-") as tmp:
        soak = Soak(Path(tmp))
        try:
            say("starting the demo apps and the sidecar of b (real processes) ...")
            sidecar = await soak.start()
            assert sidecar.pid is not None
            process = psutil.Process(sidecar.pid)
            await asyncio.sleep(1.0)  # let start-up settle: this is the idle number
            idle = rss_mib(process)
            say(f"idle sidecar: {idle:.1f} MiB RSS")
            traffic = Traffic()
            connector = aiohttp.TCPConnector(limit=args.concurrency)
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
                await drive(session, soak, traffic, args.concurrency, lambda: traffic.requests < args.first_requests)
                after_first = rss_mib(process)
                say(f"after the first {traffic.requests} requests: {after_first:.1f} MiB RSS")
                say(f"soaking for {args.seconds} s at concurrency {args.concurrency} ...")
                samples: list[Sample] = []
                started = time.monotonic()
                deadline = started + args.seconds
                counted = traffic.requests

                async def sample() -> None:
                    while True:
                        now = time.monotonic()
                        samples.append(Sample(now - started, rss_mib(process), traffic.requests - counted))
                        if now >= deadline:
                            return
                        await asyncio.sleep(min(1.0, max(0.0, deadline - now)))

                sampler = asyncio.create_task(sample())
                try:
                    await drive(session, soak, traffic, args.concurrency, lambda: time.monotonic() < deadline)
                finally:
                    await sampler
                soaked = time.monotonic() - started
            sidecar_alive = sidecar.alive
        finally:
            say("stopping every process ...")
            await soak.stop()
    slope, growth, word = verdict(samples)
    rss = [s.rss_mib for s in samples]
    soak_requests = traffic.requests - counted
    return {
        "python": platform.python_version(), "cpus": os.cpu_count(), "seconds": args.seconds,
        "concurrency": args.concurrency, "target_mib": TARGET_MIB, "growth_limit_mib": GROWTH_LIMIT_MIB,
        "idle_rss_mib": idle, "after_first_requests": args.first_requests, "after_first_rss_mib": after_first,
        "start_rss_mib": rss[0], "peak_rss_mib": max(rss), "end_rss_mib": rss[-1],
        "second_half_slope_mib_per_min": slope, "second_half_growth_mib": growth, "verdict": word,
        "within_target": max(rss) <= TARGET_MIB,
        "requests": traffic.requests, "soak_requests": soak_requests, "requests_per_second": soak_requests / soaked,
        "errors": traffic.errors, "wrong_lane": traffic.wrong_lane, "problems": traffic.examples,
        "sidecar_alive_at_end": sidecar_alive, "samples": [asdict(s) for s in samples],
    }


def chart(result: dict[str, Any]) -> str:
    points = tuple((s["seconds"], s["rss_mib"]) for s in result["samples"])
    half = [p for p in points if p[0] >= points[-1][0] / 2]
    lines = [Line("sidecar RSS (MiB), sampled every second", points)]
    if len(half) > 1:  # the fitted line over the second half, through its mean
        mean_t, mean_r = sum(t for t, _ in half) / len(half), sum(r for _, r in half) / len(half)
        slope = result["second_half_slope_mib_per_min"] / 60

        def fit(t: float) -> float:
            return mean_r + slope * (t - mean_t)

        lines.append(Line(f"least-squares fit, second half: {result['second_half_slope_mib_per_min']:+.3f} MiB/min",
                          ((half[0][0], fit(half[0][0])), (half[-1][0], fit(half[-1][0]))), dashed=True))
    notes = [
        (f"idle {result['idle_rss_mib']:.1f} MiB, after {result['after_first_requests']:,} requests "
         f"{result['after_first_rss_mib']:.1f} MiB; soak start {result['start_rss_mib']:.1f}, peak "
         f"{result['peak_rss_mib']:.1f}, end {result['end_rss_mib']:.1f} MiB"),
        (f"{result['soak_requests']:,} requests ({result['requests_per_second']:,.0f}/s, concurrency "
         f"{result['concurrency']}), {result['errors']} errors, {result['wrong_lane']} wrong lanes; verdict: "
         f"{result['verdict']} ({result['second_half_growth_mib']:+.2f} MiB over the second half)"),
    ]
    return render_line_chart(f"lane sidecar RSS over a {result['seconds']} s soak (demo config, 127.0.0.1)", lines,
                             x_label="seconds of soak", y_label="RSS (MiB)",
                             references=[Reference(f"target {TARGET_MIB:g} MiB", TARGET_MIB)], notes=notes)


def table(result: dict[str, Any]) -> str:
    rows = [
        ("idle, right after start", result["idle_rss_mib"]),
        (f"after the first {result['after_first_requests']:,} requests", result["after_first_rss_mib"]),
        ("soak start", result["start_rss_mib"]), ("soak peak", result["peak_rss_mib"]),
        ("soak end", result["end_rss_mib"]),
    ]
    out = [(f"lane sidecar soak: {result['seconds']} s, concurrency {result['concurrency']}, "
           f"Python {result['python']}, {result['cpus']} CPUs"), "", f"{'sidecar RSS':<36} {'MiB':>7}"]
    out += [f"{name:<36} {value:>7.1f}" for name, value in rows]
    out += ["", (f"second half: {result['second_half_slope_mib_per_min']:+.3f} MiB/min, "
            f"{result['second_half_growth_mib']:+.2f} MiB -> {result['verdict']} (limit {GROWTH_LIMIT_MIB:g} MiB); "
            f"peak {'within' if result['within_target'] else 'ABOVE'} the {TARGET_MIB:g} MiB target"),
            (f"requests: {result['soak_requests']:,} in the soak ({result['requests_per_second']:,.0f}/s), "
            f"{result['errors']} errors, {result['wrong_lane']} wrong lanes")]
    out += [f"  e.g. {p}" for p in result["problems"]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=300, help="length of the soak (default 300)")
    parser.add_argument("--quick", action="store_true", help="a 30 s soak")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument("--first-requests", type=int, default=FIRST_REQUESTS,
                        help=f"requests before the soak, after which RSS is reported too (default {FIRST_REQUESTS})")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--results", default=str(HERE / "results"),
                        help="directory for soak.json and soak-rss.svg (default bench/results)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 30
    if not 1 <= args.seconds <= 3600 or not 1 <= args.concurrency <= 256 or not 0 <= args.first_requests <= 100_000:
        parser.error("--seconds must be 1..3600, --concurrency 1..256 and --first-requests 0..100000")
    result = run_loop(args)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "soak.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (results / "soak-rss.svg").write_text(chart(result), encoding="utf-8")
    say(f"wrote {results / 'soak.json'} and {results / 'soak-rss.svg'}")
    print(json.dumps(result, indent=2) if args.json else table(result), flush=True)
    return 1 if result["errors"] or result["wrong_lane"] or not result["sidecar_alive_at_end"] else 0


def run_loop(args: argparse.Namespace) -> dict[str, Any]:
    """`run` on uvloop when installed (like the proxies), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(run(args))
    return uvloop.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
