"""`lane mesh verify --kill SERVICE@LANE`: kill a lane's stub under steady traffic, in a real Envoy.

The instant fallback (`mesh_config.fallback`) promises that a lane whose pods die costs no failed
request: the retry moves to the next lane down the chain, outlier detection then ejects the dead
pod, and traffic goes back to the lane once its pod answers again. This runs that promise in the
same Envoy as `lane mesh verify` (the rendered objects, istiod's translation done by hand, see
`mesh_config.bootstrap`), with steady traffic tagged LANE sent to SERVICE through the ``mesh``
listener (a sidecar's outbound side) by a few concurrent clients, in four phases:

* ``before`` -- everything up: answers come from LANE (or where it falls back statically);
* ``dying`` -- the stub is stopped while requests are in flight (its socket and connections are
  closed: what a client sees of a pod that died);
* ``gone`` -- the stub stays down;
* ``back`` -- the stub serves again on its port; the phase ends once answers come from LANE again
  (`RETURN_STREAK` in a row), or after ``return_within`` seconds, which is reported as not returned.

Every answer that is not a 200 from an instance allowed to serve is a failed request; the report
counts them per phase (0 expected) and says whether traffic returned to LANE. For a ``protocol:
grpc`` service the stubs are grpcio servers (a stopped one cancels the calls it is serving, as a
gRPC server shutting down does) and each client one grpcio channel making unary calls with the
lane in metadata (`mesh_config.grpc_wire`); a failed request is any status but OK. All loops are
bounded by request counts and deadlines; the stub, the clients and Envoy are stopped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from grpc import aio

from lane.core.config import LaneConfig
from lane.core.errors import LaneError

from . import grpc_wire
from .backends import PROBE_HEADER, run_backends
from .bootstrap import MESH_LISTENER, envoy_bootstrap
from .envoy import run_envoy
from .fallback import fallbacks
from .lanes import present_lanes
from .render import render_objects

__all__ = ["PHASES", "RETURN_STREAK", "FailoverResult", "Phase", "format_failover", "kill_and_return",
           "parse_kill"]

PHASES: Final = ("before", "dying", "gone", "back")
RETURN_STREAK: Final = 10  # answers in a row from the lane again: traffic has returned
_CLIENTS: Final = 4
_MAX_REQUESTS: Final = 20_000  # hard bound on the whole run


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    sent: int
    failed: int  # no 200, or a 200 from an instance that may not serve the lane
    served: Mapping[str, int]  # lane -> answers
    problems: tuple[str, ...] = ()  # the first few failures, as text


@dataclass(frozen=True, slots=True)
class FailoverResult:
    service: str
    lane: str
    members: tuple[str, ...]  # the instant-fallback chain; () when none is rendered
    phases: tuple[Phase, ...]
    returned: bool  # traffic came back to the lane once its stub was back

    @property
    def failed(self) -> int:
        return sum(p.failed for p in self.phases)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.returned


def parse_kill(config: LaneConfig, text: str) -> tuple[str, str]:
    """``SERVICE@LANE`` -> (service, lane), both of the config; a `LaneError` names what is wrong."""
    service, at, lane = text.partition("@")
    if not at or service not in config.services:
        raise LaneError(f"--kill {text!r}: expected SERVICE@LANE with a service of the config "
                        f"({', '.join(sorted(config.services))})")
    if lane not in config.lanes or lane == config.default_lane:
        others = ", ".join(sorted(set(config.lanes) - {config.default_lane}))
        raise LaneError(f"--kill {text!r}: expected a non-default lane of the config ({others})")
    return service, lane


class _Traffic:
    """Clients sending LANE-tagged requests to the service until stopped or the bound is reached."""

    def __init__(self, port: int, host: str, tag: tuple[str, str], service: str, grpc: bool) -> None:
        self.port, self.host, self.tag, self.service, self.grpc = port, host, tag, service, grpc
        self.phase = PHASES[0]
        self.records: dict[str, list[tuple[int, str | None, str]]] = {p: [] for p in PHASES}
        self.stopped = asyncio.Event()

    @property
    def sent(self) -> int:
        return sum(len(r) for r in self.records.values())

    async def _one(self, session: aiohttp.ClientSession) -> tuple[int, str | None, str]:
        headers = {"Host": self.host, self.tag[0]: self.tag[1], PROBE_HEADER: "1"}
        try:
            async with session.get(f"http://127.0.0.1:{self.port}/", headers=headers) as resp:
                body: Any = await resp.json(content_type=None) if resp.status == 200 else await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return 0, None, f"{type(exc).__name__}: {exc}"
        return self._served(status, body)

    def _served(self, status: int, body: Any) -> tuple[int, str | None, str]:
        if isinstance(body, dict) and body.get("service") == self.service:
            return status, str(body.get("lane")), ""
        return status, None, str(body)[:120].strip()

    async def _one_grpc(self, chan: aio.Channel) -> tuple[int, str | None, str]:
        answer = await grpc_wire.call(chan, ((self.tag[0], self.tag[1]), (PROBE_HEADER, "1")), timeout=10)
        status, lane, text = self._served(answer.status, answer.body)
        return status, lane, text if answer.code == "OK" else f"{answer.code}: {text}"

    async def client(self) -> None:
        if self.grpc:
            async with grpc_wire.channel(self.port, self.host) as chan:  # one HTTP/2 connection, as an app's
                while not self.stopped.is_set() and self.sent < _MAX_REQUESTS:
                    phase = self.phase
                    self.records[phase].append(await self._one_grpc(chan))
            return
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not self.stopped.is_set() and self.sent < _MAX_REQUESTS:
                phase = self.phase
                self.records[phase].append(await self._one(session))

    async def until(self, enough: int, deadline: float) -> None:
        """Wait until the current phase has *enough* answers (or the deadline / the bound)."""
        loop = asyncio.get_running_loop()
        while len(self.records[self.phase]) < enough and loop.time() < deadline and self.sent < _MAX_REQUESTS:
            await asyncio.sleep(0.01)


def _phase(name: str, records: Sequence[tuple[int, str | None, str]], allowed: frozenset[str]) -> Phase:
    served = Counter(lane for _, lane, _ in records if lane is not None)
    bad = [(status, lane, text) for status, lane, text in records if status != 200 or lane not in allowed]
    problems = tuple(f"{status or 'no answer'}" + (f" from {lane}" if lane else "") + (f": {text}" if text else "")
                     for status, lane, text in bad[:3])
    return Phase(name, len(records), len(bad), dict(sorted(served.items())), problems)


def _returned(records: Sequence[tuple[int, str | None, str]], lane: str) -> bool:
    streak = 0
    for status, served, _ in records:
        streak = streak + 1 if status == 200 and served == lane else 0
        if streak >= RETURN_STREAK:
            return True
    return False


async def kill_and_return(
    config: LaneConfig,
    service: str,
    lane: str,
    *,
    objects: Sequence[Mapping[str, Any]] | None = None,
    lanes: Mapping[str, frozenset[str]] | None = None,
    envoy: str | None = None,
    requests_per_phase: int = 100,
    return_within: float = 30.0,
) -> FailoverResult:
    """Kill *service*'s *lane* stub under steady *lane* traffic and bring it back (module docstring)."""
    present = present_lanes(config, lanes)
    if lane not in present.get(service, frozenset()):
        raise LaneError(f"--kill {service}@{lane}: {service} has no {lane} instance to kill")
    objects = list(objects) if objects is not None else render_objects(config, lanes=lanes)
    members = next((f.members for f in fallbacks(config, service, present, config.mesh.namespace)
                    if f.lane == lane), ())

    def has_without(dead: str | None) -> frozenset[str]:
        served = config.lane_for(service, lane, lambda s, c: c in present.get(s, frozenset()) and
                                 not (s == service and c == dead))
        return frozenset({served} if served is not None else ())

    up, down = has_without(None), has_without(lane)
    allowed = {"before": up, "dying": up | down, "gone": down, "back": up | down}
    subsets = [(svc, ln) for svc in sorted(present) for ln in sorted(present[svc])]
    loop = asyncio.get_running_loop()
    grpc = frozenset(name for name, svc in config.services.items() if svc.grpc)
    async with run_backends(subsets, config.tag.header, grpc=grpc) as backends:
        async with run_envoy(envoy_bootstrap(config, objects, backends), binary=envoy) as running:
            traffic = _Traffic(running.listeners[MESH_LISTENER], config.services[service].host,
                               (config.tag.header, lane), service, service in grpc)
            clients = [asyncio.ensure_future(traffic.client()) for _ in range(_CLIENTS)]
            try:
                await traffic.until(requests_per_phase, loop.time() + 60)
                traffic.phase = "dying"
                await asyncio.sleep(0.05)  # requests in flight when the stub goes
                await backends.stop((service, lane))
                await traffic.until(requests_per_phase, loop.time() + 60)
                traffic.phase = "gone"
                await traffic.until(requests_per_phase, loop.time() + 60)
                traffic.phase = "back"
                await backends.start((service, lane))
                deadline = loop.time() + return_within
                while loop.time() < deadline and not _returned(traffic.records["back"], lane) \
                        and traffic.sent < _MAX_REQUESTS:
                    await asyncio.sleep(0.05)
            finally:
                traffic.stopped.set()
                for task in clients:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
    phases = tuple(_phase(name, traffic.records[name], allowed[name]) for name in PHASES)
    return FailoverResult(service, lane, members, phases, _returned(traffic.records["back"], lane))


def format_failover(result: FailoverResult) -> list[str]:
    """The report: one line per phase, then the verdict."""
    chain = " → ".join(result.members) if result.members else "none rendered"
    lines = [f"failover {result.service}@{result.lane} (instant fallback: {chain}):"]
    for phase in result.phases:
        served = " ".join(f"{lane}={n}" for lane, n in phase.served.items()) or "nothing"
        lines.append(f"  {phase.name:<6} {phase.sent} sent, {phase.failed} failed, served {served}")
        lines += [f"         {p}" for p in phase.problems]
    back = "traffic returned to" if result.returned else "traffic did NOT return to"
    lines.append(f"{result.failed} failed requests; {back} {result.lane}")
    return lines
