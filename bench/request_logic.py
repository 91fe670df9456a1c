"""lane's own per-request work, without sockets: what the request logic costs on top of the engine.

`make bench` measures whole processes against Envoy; this isolates the part only lane has. The real
gateway handler and the real sidecar outbound + inbound handlers (`lane.gateway.handler`,
`lane.sidecar.handler`) are driven with in-memory exchanges and an upstream that answers at once, so
no parsing, socket or event-loop wake-up is counted: only coloring, lane and trace-header work, routing,
the hop record, metrics. Each request carries fresh trace headers (``traceparent``, ``x-request-id``,
``b3``) as traffic behind a gateway does; every answer is checked (status 200, the lane served, the hop
record), so a broken handler cannot report a fast figure.

    python bench/request_logic.py [--pairs 20000] [--rounds 5] [--profile]

Prints CPU microseconds per request (process time; min and median of the rounds), and with
``--profile`` the 25 functions with the most own time (cProfile: its overhead inflates small functions,
so read it as where, not how much). Figures on a busy machine vary by tens of percent: compare trees
interleaved (run old, new, old, new) rather than one run each.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from multidict import CIMultiDict

from lane.core.config_load import load_config_or_demo
from lane.core.endpoint import Endpoint
from lane.dataplane.runtime import Runtime
from lane.engine.exchange import Answer, BodySource, NoBody, Timeouts
from lane.gateway.handler import gateway_path
from lane.sidecar.handler import inbound_path, outbound_path
from lane.sidecar.state import Sidecar
from lane.telemetry.tracing import Tracing

CONFIG = """\
lanes: {gray: {fallback: base}}
coloring: [{lane: gray, match: {headers: [{name: user-agent, exact: xiaoming}]}}]
entry: a
proxy: {trace_headers: [traceparent, x-request-id, b3]}
services:
  a: {instances: {base: ["127.0.0.1:29182"], gray: ["127.0.0.1:29183"]}}
"""
APP_ANSWER = (("Server", "nginx"), ("Date", "Thu, 03 Dec 2026 16:00:00 GMT"), ("Content-Type", "text/plain"),
              ("Content-Length", "3"), ("Connection", "keep-alive"))
_BODY = NoBody()


class _Exchange:
    """An in-memory `lane.engine.exchange.Exchange`: what the handler answered is kept in `answer`."""

    method = "GET"
    target = "/"
    path = "/"
    query_string = ""
    version = "1.1"
    scheme = "http"
    remote = "127.0.0.1"
    sockname = ("127.0.0.1", 29182)
    body = _BODY
    answered = False

    def __init__(self, headers: CIMultiDict[str]) -> None:
        self.headers = headers
        self.status = 0
        self.answer: tuple[int, CIMultiDict[str]] | None = None

    def start(self, status: int, reason: str, headers: CIMultiDict[str], length: int | None, first: bytes,
              end: bool) -> None:
        self.answer = (status, headers)

    def respond(self, status: int, headers: CIMultiDict[str], body: bytes = b"", reason: str | None = None) -> None:
        self.answer = (status, headers)

    def close_after(self) -> None:
        pass

    async def write(self, chunk: bytes) -> None:
        raise AssertionError("answers here arrive whole: nothing is streamed")

    def end(self, trailers: CIMultiDict[str] | None = None) -> None:
        pass

    def abort(self) -> None:
        raise AssertionError("nothing breaks here")


class _Answer:
    """A complete upstream answer (`lane.engine.exchange.Answer`): head and its 3-byte body at once."""

    status = 200
    reason = "OK"
    length: int | None = 3
    at_eof = True
    trailers = None

    def __init__(self, headers: CIMultiDict[str]) -> None:
        self.headers = headers

    def read_nowait(self) -> bytes:
        return b"ok\n"

    async def chunks(self) -> AsyncIterator[bytes]:
        return
        yield b""  # an async generator with nothing left: the body came whole

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Upstream:
    """A `lane.engine.exchange.Sender` that answers at once with *answer*, keeping the headers it was sent."""

    def __init__(self, answer: tuple[tuple[str, str], ...]) -> None:
        self._answer = answer
        self.sent: CIMultiDict[str] = CIMultiDict()

    async def send(self, method: str, endpoint: Any, target: str, headers: CIMultiDict[str],
                   body: BodySource | None, spec: Timeouts, timeout: float | None = None) -> Answer:
        self.sent = headers
        return _Answer(CIMultiDict(self._answer))


def _traced(user_agent: str) -> CIMultiDict[str]:
    trace, span = f"{random.getrandbits(128):032x}", f"{random.getrandbits(64):016x}"
    return CIMultiDict([("Host", "a"), ("User-Agent", user_agent), ("traceparent", f"00-{trace}-{span}-01"),
                        ("x-request-id", f"{trace[:8]}-{trace[8:12]}-4{trace[13:16]}-a{trace[17:20]}-{trace[20:]}"),
                        ("b3", f"{trace}-{span}-1")])


def _check(exchange: _Exchange, served: str) -> None:
    if exchange.answer is None or exchange.answer[0] != 200 or exchange.answer[1].get("x-lane-served") != served:
        raise SystemExit(f"request_logic: a handler answered {exchange.answer!r}, not 200 from {served}")


def subjects(config_path: Path) -> dict[str, Callable[[], Awaitable[None]]]:
    """name -> one request through that subject's real handlers."""
    config = load_config_or_demo(str(config_path), demo=False, command="request_logic")
    runtime = Runtime(config, config_path)
    gateway_up = _Upstream((*APP_ANSWER, ("x-lane-path", "a@gray;requested=gray;instance=127.0.0.1:29183"),
                            ("x-lane-served", "gray")))
    gateway = gateway_path(runtime, Tracing())(gateway_up)
    sidecar = Sidecar.create(Runtime(config, config_path), "a", "base", Endpoint("127.0.0.1", 29181))
    inbound = inbound_path(sidecar)(_Upstream(APP_ANSWER))
    to_inbound = _Upstream((*APP_ANSWER, ("x-lane-path", "a@base;requested=base;instance=127.0.0.1:29182"),
                            ("x-lane-served", "base")))
    outbound = outbound_path(sidecar)(to_inbound)

    async def gateway_request() -> None:
        request = _Exchange(_traced("xiaoming"))
        await gateway(request)
        _check(request, "gray")

    async def sidecar_pair() -> None:
        call = _Exchange(_traced("wrk"))
        call.headers["x-mse-tag"] = "base"
        await outbound(call)
        arriving = _Exchange(CIMultiDict(to_inbound.sent))  # what the outbound side sent is what arrives
        await inbound(arriving)
        _check(call, "base")
        _check(arriving, "base")

    return {"gateway": gateway_request, "sidecar pair (outbound + inbound)": sidecar_pair}


async def _rounds(one: Callable[[], Awaitable[None]], pairs: int, rounds: int) -> list[float]:
    for _ in range(min(pairs, 2000)):  # warm: caches, the first metric children, lazy imports
        await one()
    spent = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(pairs):
            await one()
        spent.append((time.process_time() - started) / pairs * 1e6)
    return spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20000, help="requests per round (default 20000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per subject (default 5)")
    parser.add_argument("--profile", action="store_true", help="also print where the time goes (cProfile)")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.rounds < 1:
        parser.error("--pairs and --rounds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="lane-request-logic-") as tmp:
        config_path = Path(tmp) / "lane.yaml"
        config_path.write_text(CONFIG)
        for name, one in subjects(config_path).items():
            spent = asyncio.run(_rounds(one, args.pairs, args.rounds))
            print(f"{name}: {min(spent):.1f} us CPU per request (median {statistics.median(spent):.1f}, "
                  f"{args.rounds} rounds x {args.pairs})", flush=True)
            if args.profile:
                profile = cProfile.Profile()
                profile.runcall(asyncio.run, _rounds(one, args.pairs, 1))
                pstats.Stats(profile, stream=sys.stdout).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
