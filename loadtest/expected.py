"""The expected path of one request, hop by hop, and what is wrong with the served one.

For a request in lane L, the lane that must serve service S is `LaneConfig.lane_for(S, L, has)`
— the one shared definition — where ``has`` is what S really has: the config's static instances
plus any lanes the live admin views reported. A hop served further down L's chain is correct only
as a health fallback: its reason is ``unhealthy`` or ``connect-failed`` *and* every skipped lane
was seen without a usable instance close to the request (`HealthHistory`). A ``no-instance``
fallback must match what S has. Findings name what went wrong in words a human greps for:
``misroute b: expected gray, served base``, ``leak: base request served by c@gray``.

Pure: the caller passes the hops it parsed from ``x-lane-path`` and the health history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from lane.core.config import LaneConfig
from lane.core.hops import TRUNCATED, FallbackReason, Hop

__all__ = ["Finding", "FindingKind", "HealthView", "HopVerdict", "RequestVerdict", "chain_of", "verify"]

FindingKind = Literal[
    "no-record",
    "unknown-service",
    "miscolored",
    "lane-lost",
    "leak",
    "impure",
    "misroute",
    "bad-fallback",
    "unjustified-fallback",
]
HEALTH_REASONS: Final = frozenset({FallbackReason.UNHEALTHY.value, FallbackReason.CONNECT_FAILED.value})


class HealthView(Protocol):
    def unhealthy_near(self, key: tuple[str, str], start: float, end: float, grace: float) -> bool: ...

    def known_lanes(self, service: str) -> set[str]: ...


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind
    service: str | None
    message: str
    health_dependent: bool = False  # fresher health data might still justify it


@dataclass(frozen=True, slots=True)
class HopVerdict:
    hop: Hop
    expected: str | None  # the lane that serves when nothing is unhealthy
    justified_fallback: bool = False  # a health fallback we accepted
    finding: Finding | None = None


@dataclass(frozen=True, slots=True)
class RequestVerdict:
    lane: str | None  # the lane the request was in (None: it could not be told)
    hops: tuple[HopVerdict, ...]
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def health_dependent(self) -> bool:
        """Every finding is an unjustified health fallback: worth re-checking with fresh health data."""
        return bool(self.findings) and all(f.health_dependent for f in self.findings)

    def served_path(self) -> str:
        return " → ".join(v.hop.label() for v in self.hops)

    def expected_path(self) -> str:
        return " → ".join(f"{v.hop.service}@{v.expected or '503'}" for v in self.hops)


def chain_of(config: LaneConfig, lane: str) -> tuple[str, ...]:
    """The lanes that may serve a request in *lane*: its fallback chain, or itself when strict."""
    chain = config.chain(lane)
    first = config.lanes.get(chain[0])
    return chain[:1] if first is not None and first.strict else chain


def _known(config: LaneConfig, service: str, health: HealthView) -> set[str]:
    return set(config.services[service].lanes) | health.known_lanes(service)


def _check_hop(
    config: LaneConfig, lane: str, hop: Hop, first: bool, health: HealthView, start: float, end: float, grace: float
) -> HopVerdict:
    svc = hop.service
    if svc not in config.services:
        return HopVerdict(hop, None, finding=Finding("unknown-service", svc, f"unknown service {svc} in path"))
    known = _known(config, svc, health)
    expected = config.lane_for(svc, lane, has=lambda s, candidate: candidate in known)
    chain = chain_of(config, lane)
    if hop.lane not in chain:
        kind: FindingKind = "leak" if lane == config.default_lane else "impure"
        return HopVerdict(hop, expected, finding=Finding(kind, svc, f"{kind}: {lane} request served by {hop.label()}"))
    if hop.requested != lane:
        if first:
            msg = f"miscolored: expected {lane}, colored {hop.requested}"
            return HopVerdict(hop, expected, finding=Finding("miscolored", svc, msg))
        if lane == config.default_lane:  # an untagged request travelling under a lane's tag
            msg = f"leak: {lane} request carried as {hop.requested} at {svc}"
            return HopVerdict(hop, expected, finding=Finding("leak", svc, msg))
        msg = f"lane lost at {svc}: requested {hop.requested}, expected {lane}"
        return HopVerdict(hop, expected, finding=Finding("lane-lost", svc, msg))
    if expected is None or hop.lane not in known:
        msg = f"misroute {svc}: expected {expected or 'no instance (503)'}, served {hop.lane}"
        return HopVerdict(hop, expected, finding=Finding("misroute", svc, msg))
    reason = hop.fallback
    if hop.lane == expected:
        if expected != lane and reason in HEALTH_REASONS:
            msg = f"bad fallback at {svc}: reason {reason}, but {svc} has no {lane} instance"
            return HopVerdict(hop, expected, finding=Finding("bad-fallback", svc, msg))
        return HopVerdict(hop, expected)
    # Served further down the chain than the instances allow without a health problem.
    skipped = [c for c in chain[chain.index(expected):chain.index(hop.lane)] if c in known]
    if reason == FallbackReason.NO_INSTANCE.value:
        msg = f"bad fallback at {svc}: no-instance, but {svc} has {skipped[0]}"
        return HopVerdict(hop, expected, finding=Finding("bad-fallback", svc, msg))
    if reason in HEALTH_REASONS and all(health.unhealthy_near((svc, c), start, end, grace) for c in skipped):
        return HopVerdict(hop, expected, justified_fallback=True)
    msg = f"misroute {svc}: expected {expected}, served {hop.lane}"
    if reason in HEALTH_REASONS:
        msg += f" ({reason}, but {svc}@{expected} was healthy)"
        return HopVerdict(hop, expected, finding=Finding("unjustified-fallback", svc, msg, health_dependent=True))
    return HopVerdict(hop, expected, finding=Finding("misroute", svc, msg))


def verify(
    config: LaneConfig,
    hops: Sequence[Hop],
    *,
    lane: str | None,
    possible: Sequence[str],
    health: HealthView,
    start: float,
    end: float,
    grace: float,
) -> RequestVerdict:
    """Judge one served path against the expected one.

    *lane* is the lane the persona must be colored; None for a random share, in which case the
    entry hop's requested lane is taken and must be one of *possible*.
    """
    hops = [h for h in hops if h != TRUNCATED and h.service != TRUNCATED.service]
    if not hops:
        finding = Finding("no-record", None, "no hop record (x-lane-path missing)")
        return RequestVerdict(lane, (), (finding,))
    findings: list[Finding] = []
    if lane is None:
        lane = hops[0].requested
        if lane not in possible:
            msg = f"miscolored: expected one of {'|'.join(possible)}, colored {lane}"
            findings.append(Finding("miscolored", hops[0].service, msg))
    verdicts = tuple(
        _check_hop(config, lane, hop, i == 0, health, start, end, grace) for i, hop in enumerate(hops)
    )
    findings.extend(v.finding for v in verdicts if v.finding is not None)
    return RequestVerdict(lane, verdicts, tuple(findings))
