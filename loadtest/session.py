"""One load-test process's lane state: config, personas, health, counters, and the verdict.

The locust plugin creates one `LaneSession` per process and hands it requests to judge; everything
here is plain Python so it is unit-tested without locust. On a worker, `stats` holds the counts
since the last report to the master (`take_report`); on the master it is the merged total; a
local run is both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lane.core.config import LaneConfig
from lane.core.hops import Hop

from .expected import RequestVerdict, verify
from .health import HealthHistory
from .personas import Persona, build_personas, grpc_twins
from .stats import LaneStats
from .summary import ChaosRun, Summary, Thresholds, summarize

__all__ = ["LaneOptions", "LaneSession"]


@dataclass(frozen=True, slots=True)
class LaneOptions:
    admins: tuple[str, ...] = ()
    json_path: str | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    poll_interval: float = 0.5
    grace: float = 1.5  # seconds around a request in which an unhealthy sighting justifies a fallback
    chaos: str | None = None  # "auto" or "service@lane"
    chaos_after: float | None = None
    chaos_down: float | None = None
    forged: bool = True
    pace: float = 0.02  # seconds each user waits between requests
    grpc_method: str | None = None  # also send every persona gRPC can carry as a unary call to this method
    grpc_agent: str = ""  # what grpcio appends to a client's user agent (`loadtest.grpc_client.agent_suffix`)


class LaneSession:
    def __init__(self, config: LaneConfig, options: LaneOptions, personas: Sequence[Persona] | None = None) -> None:
        self.config = config
        self.options = options
        if personas is None:
            personas = build_personas(config, forged=options.forged)
            if options.grpc_method:
                personas = (*personas, *grpc_twins(config, personas, options.grpc_method, options.grpc_agent))
        self.personas = tuple(personas)
        if not self.personas:
            raise ValueError(f"{config.source}: no traffic personas could be derived from the config")
        self.health = HealthHistory()
        self.stats = LaneStats()
        self.chaos: ChaosRun | None = None
        self.bad_reports = 0

    def verify(self, persona: Persona, hops: Sequence[Hop], start: float, end: float) -> RequestVerdict:
        return verify(
            self.config, hops, lane=persona.lane, possible=persona.possible_lanes, health=self.health,
            start=start, end=end, grace=self.options.grace,
        )

    def verify_settled(
        self,
        persona: Persona,
        hops: Sequence[Hop],
        start: float,
        end: float,
        refresh: Callable[[], Any],
        sleep: Callable[[float], None],
        clock: Callable[[], float] = time.time,
    ) -> RequestVerdict:
        """Like `verify`, but give health fallbacks the grace period to be explained.

        A proxy can eject an instance a moment before our next poll shows it; rather than call
        that a misroute, refresh the health view until *grace* after the request has passed.
        """
        verdict = self.verify(persona, hops, start, end)
        deadline = end + self.options.grace
        while verdict.health_dependent and self.options.admins and clock() < deadline:
            refresh()
            verdict = self.verify(persona, hops, start, end)
            if verdict.health_dependent:
                sleep(min(0.2, max(0.0, deadline - clock())))
        return verdict

    def record(self, persona: Persona, verdict: RequestVerdict, http_ok: bool, when: float) -> None:
        self.stats.record(persona.name, verdict, http_ok=http_ok, when=when, sticky_key=persona.sticky_key)

    def take_report(self) -> dict[str, Any]:
        """The counts since the last report, as wire data; the local counters start again from zero."""
        wire = self.stats.to_wire()
        self.stats = LaneStats()
        return wire

    def merge_report(self, worker: str, data: Any) -> None:
        """Add one worker's report; a malformed one is counted and skipped, never fatal."""
        try:
            self.stats.merge(LaneStats.from_wire(data), worker=worker)
        except ValueError:
            self.bad_reports += 1
            raise

    def summary(self) -> Summary:
        return summarize(
            self.stats, self.personas, self.config.default_lane, self.options.thresholds, self.chaos,
            grace=self.options.grace + self.config.proxy.eject_seconds, eject_seconds=self.config.proxy.eject_seconds,
        )
