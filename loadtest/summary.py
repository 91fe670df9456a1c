"""The verdict of a run: each property checked, reported, and folded into an exit code.

Lane purity (no hop outside its lane's chain), leakage (untagged traffic never on lane
instances), fallback correctness, stickiness (one lane per hash key) and percentage shares are
reported separately so a failure says which promise broke. Shares of random (keyless) percentages
are judged with a binomial tolerance of ``z`` standard deviations (4 by default: a correct data
plane fails it about once in 16 000 checks); too few samples are reported, not judged.

Pure: takes the merged `LaneStats`, the personas and what the chaos driver did.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from .personas import Persona
from .stats import LaneStats

__all__ = ["EXIT_FAILED", "EXIT_OK", "ChaosCheck", "ChaosRun", "ShareCheck", "Summary", "Thresholds", "summarize"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
_ROUTING_KINDS: Final = ("misroute", "lane-lost", "miscolored", "no-record", "unknown-service")


@dataclass(frozen=True, slots=True)
class Thresholds:
    max_error_rate: float = 0.01  # HTTP failures / requests
    share_z: float = 4.0
    min_share_samples: int = 20


@dataclass(frozen=True, slots=True)
class ShareCheck:
    persona: str
    lane: str
    expected: float
    observed: float
    samples: int
    tolerance: float
    judged: bool  # enough samples to judge
    ok: bool


@dataclass(frozen=True, slots=True)
class ChaosRun:
    """What the chaos driver did: stopped *service*@*lane* at one time, restarted it at another."""

    service: str
    lane: str
    stopped_at: float | None = None
    started_at: float | None = None
    error: str | None = None
    ended_at: float | None = None  # when the run ended (set at the end, for a helpful message)


@dataclass(frozen=True, slots=True)
class ChaosCheck:
    target: str
    fallbacks_while_down: int
    in_lane_after_restart: int
    ok: bool
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Summary:
    ok: bool
    exit_code: int
    reasons: tuple[str, ...]
    error_rate: float
    checks: dict[str, Any] = field(default_factory=dict)
    shares: tuple[ShareCheck, ...] = ()
    chaos: ChaosCheck | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "exit_code": self.exit_code,
            "reasons": list(self.reasons),
            "error_rate": self.error_rate,
            "checks": self.checks,
            "shares": [asdict(s) for s in self.shares],
            "chaos": asdict(self.chaos) if self.chaos else None,
        }


def _shares(stats: LaneStats, personas: Sequence[Persona], th: Thresholds) -> list[ShareCheck]:
    out = []
    for persona in personas:
        if persona.lane is not None:
            continue
        counts = stats.personas.get(persona.name)
        n = sum(counts.lanes.values()) if counts else 0
        for lane, p in persona.outcomes:
            hits = counts.lanes.get(lane, 0) if counts else 0
            observed = hits / n if n else 0.0
            tolerance = th.share_z * math.sqrt(p * (1 - p) / n) if n else 1.0
            judged = n >= th.min_share_samples
            ok = not judged or abs(observed - p) <= tolerance + 1e-12
            out.append(ShareCheck(persona.name, lane, p, observed, n, tolerance, judged, ok))
    return out


def _chaos(stats: LaneStats, run: ChaosRun, grace: float, eject_seconds: float) -> ChaosCheck:
    target = f"{run.service}@{run.lane}"
    if run.error or run.stopped_at is None or run.started_at is None:
        return ChaosCheck(target, 0, 0, False, run.error or "the instance was not stopped and restarted")
    down = range(int(run.stopped_at), int(run.started_at + grace) + 1)
    fallback = stats.series(run.service, run.lane, "fallback")
    back = stats.series(run.service, run.lane, "in")
    fell = sum(n for s, n in fallback.items() if s in down)
    recovered = sum(n for s, n in back.items() if s > int(run.started_at))
    problem = None
    if not fell:
        problem = f"no fallback observed at {run.service} while {target} was stopped"
    elif not recovered:
        problem = f"no request returned to {target} after it restarted"
        if run.ended_at is not None:
            problem += (f" (it was back {run.ended_at - run.started_at:.1f}s before the run ended; proxies may"
                        f" keep it ejected for {eject_seconds:g}s: run longer or start chaos earlier)")
    return ChaosCheck(target, fell, recovered, problem is None, problem)


def summarize(
    stats: LaneStats,
    personas: Sequence[Persona],
    default_lane: str,
    thresholds: Thresholds = Thresholds(),
    chaos: ChaosRun | None = None,
    grace: float = 1.0,
    eject_seconds: float = 0.0,
) -> Summary:
    """Judge a finished (or running) test."""
    reasons: list[str] = []
    if stats.requests == 0:
        reasons.append("no request was made")
    if stats.lane_failures:
        top = sorted(stats.findings.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        listed = "; ".join(f"{msg} (x{n})" for msg, n in top)
        reasons.append(f"{stats.lane_failures} request(s) took the wrong lane: {listed}")
    error_rate = stats.http_failures / stats.requests if stats.requests else 0.0
    if error_rate > thresholds.max_error_rate:
        reasons.append(f"error rate {error_rate:.2%} exceeds {thresholds.max_error_rate:.2%}")

    sticky_violations = {k: sorted(v) for k, v in stats.sticky.items() if len(v) > 1}
    for key, lanes in sorted(sticky_violations.items()):
        reasons.append(f"stickiness: key {key} was colored {', '.join(lanes)}")

    shares = _shares(stats, personas, thresholds)
    for s in shares:
        if not s.ok:
            reasons.append(
                f"share {s.persona} -> {s.lane}: observed {s.observed:.3f} of {s.samples}, "
                f"expected {s.expected:.3f} ± {s.tolerance:.3f}"
            )

    chaos_check = _chaos(stats, chaos, grace, eject_seconds) if chaos is not None else None
    if chaos_check is not None and not chaos_check.ok:
        reasons.append(f"chaos {chaos_check.target}: {chaos_check.problem}")

    fallbacks: dict[str, int] = {}
    justified = 0
    for cell in stats.cells.values():
        justified += cell.justified
        for reason, n in cell.fallbacks.items():
            fallbacks[reason] = fallbacks.get(reason, 0) + n
    default_requests = sum(p.lanes.get(default_lane, 0) for p in stats.personas.values())
    kinds = stats.kinds
    checks: dict[str, Any] = {
        "purity": {"violations": kinds.get("impure", 0) + kinds.get("leak", 0),
                   "ok": not (kinds.get("impure", 0) + kinds.get("leak", 0))},
        "leakage": {"default_lane_requests": default_requests, "leaks": kinds.get("leak", 0),
                    "ok": not kinds.get("leak", 0)},
        "fallback": {"by_reason": fallbacks, "health_justified": justified,
                     "unjustified": kinds.get("unjustified-fallback", 0), "bad_reason": kinds.get("bad-fallback", 0),
                     "ok": not (kinds.get("bad-fallback", 0) + kinds.get("unjustified-fallback", 0))},
        "routing": {kind: kinds.get(kind, 0) for kind in _ROUTING_KINDS}
        | {"ok": not any(kinds.get(kind, 0) for kind in _ROUTING_KINDS)},
        "stickiness": {"keys": len(stats.sticky), "violations": sticky_violations, "ok": not sticky_violations},
        "shares": {"checked": sum(1 for s in shares if s.judged), "ok": all(s.ok for s in shares)},
    }
    ok = not reasons
    return Summary(ok, EXIT_OK if ok else EXIT_FAILED, tuple(reasons), error_rate, checks, tuple(shares), chaos_check)
