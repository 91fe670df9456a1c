"""Lane statistics: additive counters that merge across locust workers.

Each worker records every request's verdict here and ships the counts to the master with its
regular locust report, then starts from zero (like locust's own request stats), so the master's
sum is exact: its request count equals the sum of what the workers shipped, which the JSON summary
lets anyone check against locust's own numbers. Everything is a sum of integers keyed by strings,
so merging is order-independent and the wire form is plain JSON/msgpack.

Pure: no locust, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .expected import RequestVerdict

__all__ = ["CellCounts", "LaneStats", "PersonaCounts"]


def _add(into: dict[str, int], key: str, n: int = 1) -> None:
    into[key] = into.get(key, 0) + n


def _merge_counts(into: dict[str, int], other: Mapping[str, int]) -> None:
    for key, n in other.items():
        _add(into, key, n)


@dataclass(slots=True)
class CellCounts:
    """One service in one requested lane: where it was served, why it fell back, what failed."""

    requests: int = 0
    served: dict[str, int] = field(default_factory=dict)  # served lane -> count
    fallbacks: dict[str, int] = field(default_factory=dict)  # reason -> count
    justified: int = 0  # health fallbacks that were accepted
    failures: int = 0  # hops with a finding


@dataclass(slots=True)
class PersonaCounts:
    requests: int = 0
    failures: int = 0  # requests with a lane finding
    http_failures: int = 0
    lanes: dict[str, int] = field(default_factory=dict)  # colored lane -> count
    paths: dict[str, int] = field(default_factory=dict)  # served path -> count


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"lane stats: {where}: expected a count, got {value!r}")
    return value


def _mapping(value: Any, where: str) -> dict[Any, Any]:
    if not isinstance(value, dict):  # a shape error in data from the network: ValueError like the rest
        raise ValueError(  # noqa: TRY004
            f"lane stats: {where}: expected a mapping, got {type(value).__name__}")
    return value


def _counts(value: Any, where: str) -> dict[str, int]:
    return {str(k): _int(v, f"{where}.{k}") for k, v in _mapping(value, where).items()}


class LaneStats:
    """Per-request lane verdicts, summed."""

    def __init__(self) -> None:
        self.requests = 0
        self.http_failures = 0
        self.lane_failures = 0
        self.cells: dict[str, CellCounts] = {}  # "service|lane"
        self.personas: dict[str, PersonaCounts] = {}
        self.findings: dict[str, int] = {}  # message -> count
        self.kinds: dict[str, int] = {}  # finding kind -> count
        self.sticky: dict[str, dict[str, int]] = {}  # sticky key -> colored lane -> count
        self.timeline: dict[str, dict[str, int]] = {}  # "service|lane|in|fallback" -> second -> count
        self.workers: dict[str, int] = {}  # worker id -> requests it reported

    def record(
        self,
        persona: str,
        verdict: RequestVerdict,
        *,
        http_ok: bool,
        when: float,
        sticky_key: str | None = None,
    ) -> None:
        """Count one finished request."""
        self.requests += 1
        pc = self.personas.setdefault(persona, PersonaCounts())
        pc.requests += 1
        if not http_ok:
            self.http_failures += 1
            pc.http_failures += 1
        if verdict.findings:
            self.lane_failures += 1
            pc.failures += 1
        for finding in verdict.findings:
            _add(self.findings, finding.message)
            _add(self.kinds, finding.kind)
        if verdict.lane is not None:
            _add(pc.lanes, verdict.lane)
            if sticky_key is not None:
                _add(self.sticky.setdefault(sticky_key, {}), verdict.lane)
        _add(pc.paths, verdict.served_path() or "(none)")
        second = str(int(when))
        for hv in verdict.hops:
            cell = self.cells.setdefault(f"{hv.hop.service}|{hv.hop.requested}", CellCounts())
            cell.requests += 1
            _add(cell.served, hv.hop.lane)
            if hv.hop.fell_back:
                _add(cell.fallbacks, hv.hop.fallback or "unspecified")
            if hv.justified_fallback:
                cell.justified += 1
            if hv.finding is not None:
                cell.failures += 1
            where = "fallback" if hv.hop.fell_back else "in"
            _add(self.timeline.setdefault(f"{hv.hop.service}|{hv.hop.requested}|{where}", {}), second)

    def merge(self, other: LaneStats, worker: str | None = None) -> None:
        """Add *other*'s counts (one worker's report) to these."""
        self.requests += other.requests
        self.http_failures += other.http_failures
        self.lane_failures += other.lane_failures
        for key, cell in other.cells.items():
            mine = self.cells.setdefault(key, CellCounts())
            mine.requests += cell.requests
            mine.justified += cell.justified
            mine.failures += cell.failures
            _merge_counts(mine.served, cell.served)
            _merge_counts(mine.fallbacks, cell.fallbacks)
        for name, pc in other.personas.items():
            mp = self.personas.setdefault(name, PersonaCounts())
            mp.requests += pc.requests
            mp.failures += pc.failures
            mp.http_failures += pc.http_failures
            _merge_counts(mp.lanes, pc.lanes)
            _merge_counts(mp.paths, pc.paths)
        _merge_counts(self.findings, other.findings)
        _merge_counts(self.kinds, other.kinds)
        for key, lanes in other.sticky.items():
            _merge_counts(self.sticky.setdefault(key, {}), lanes)
        for key, series in other.timeline.items():
            _merge_counts(self.timeline.setdefault(key, {}), series)
        _merge_counts(self.workers, other.workers)
        if worker is not None:
            _add(self.workers, worker, other.requests)

    def series(self, service: str, lane: str, where: str) -> dict[int, int]:
        """Requests per wall-clock second for *service* in *lane*, served in lane or by fallback."""
        return {int(s): n for s, n in self.timeline.get(f"{service}|{lane}|{where}", {}).items()}

    def to_wire(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "http_failures": self.http_failures,
            "lane_failures": self.lane_failures,
            "cells": {
                k: {"requests": c.requests, "served": dict(c.served), "fallbacks": dict(c.fallbacks),
                    "justified": c.justified, "failures": c.failures}
                for k, c in self.cells.items()
            },
            "personas": {
                k: {"requests": p.requests, "failures": p.failures, "http_failures": p.http_failures,
                    "lanes": dict(p.lanes), "paths": dict(p.paths)}
                for k, p in self.personas.items()
            },
            "findings": dict(self.findings),
            "kinds": dict(self.kinds),
            "sticky": {k: dict(v) for k, v in self.sticky.items()},
            "timeline": {k: dict(v) for k, v in self.timeline.items()},
            "workers": dict(self.workers),
        }

    @classmethod
    def from_wire(cls, doc: Any) -> LaneStats:
        """Rebuild stats from `to_wire` output; a malformed document raises ValueError naming the spot."""
        _mapping(doc, "(top level)")
        out = cls()
        out.requests = _int(doc.get("requests", 0), "requests")
        out.http_failures = _int(doc.get("http_failures", 0), "http_failures")
        out.lane_failures = _int(doc.get("lane_failures", 0), "lane_failures")
        for key, c in _mapping(doc.get("cells", {}), "cells").items():
            where = f"cells.{key}"
            _mapping(c, where)
            out.cells[str(key)] = CellCounts(
                _int(c.get("requests", 0), where), _counts(c.get("served", {}), where + ".served"),
                _counts(c.get("fallbacks", {}), where + ".fallbacks"), _int(c.get("justified", 0), where),
                _int(c.get("failures", 0), where),
            )
        for key, p in _mapping(doc.get("personas", {}), "personas").items():
            where = f"personas.{key}"
            _mapping(p, where)
            out.personas[str(key)] = PersonaCounts(
                _int(p.get("requests", 0), where), _int(p.get("failures", 0), where),
                _int(p.get("http_failures", 0), where), _counts(p.get("lanes", {}), where + ".lanes"),
                _counts(p.get("paths", {}), where + ".paths"),
            )
        out.findings = _counts(doc.get("findings", {}), "findings")
        out.kinds = _counts(doc.get("kinds", {}), "kinds")
        out.sticky = {str(k): _counts(v, f"sticky.{k}") for k, v in _mapping(doc.get("sticky", {}), "sticky").items()}
        out.timeline = {str(k): _counts(v, f"timeline.{k}") for k, v in _mapping(doc.get("timeline", {}), "timeline").items()}
        out.workers = _counts(doc.get("workers", {}), "workers")
        return out
