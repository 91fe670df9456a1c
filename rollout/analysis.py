"""Judge one step: the lane against the default lane, on the same traffic, across the whole chain.

Checks, over the step's window (`lane.rollout`'s `Snapshot.since`):

* **entry** (the gateway): requests colored into the lane against those left in the default lane,
  what the users of each lane got back;
* **every service that served the lane** (each sidecar's inbound rows whose served lane is it):
  that service's lane instances against its default-lane instances, so a bad gray instance deep
  in the chain is named even when the entry service has no gray instance at all.

A check fails when the lane's error rate (5xx) is above ``max_error_rate`` *and* above the default
lane's (an error rate both lanes share is the environment's, not the release's), or when its p99
is above ``max_p99_ratio`` times the default lane's and above ``min_p99`` (a ratio of two sub-10 ms
figures on loopback is noise). With fewer than ``min_requests`` lane requests at the entry the step
is not judged at all (`Verdict.WAIT`): a rollout never promotes on too little data.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .metrics_window import Snapshot, Tally

__all__ = ["Check", "Judgement", "Thresholds", "Verdict", "judge"]


@dataclass(frozen=True, slots=True)
class Thresholds:
    max_error_rate: float = 0.01
    max_p99_ratio: float = 2.0
    min_p99: float = 0.025  # seconds
    min_requests: int = 50


class Verdict(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    WAIT = "wait"  # too little lane traffic to judge


@dataclass(frozen=True, slots=True)
class Check:
    """One place judged: the lane's figures against the default lane's there."""

    where: str  # "entry" or a service name
    requests: int
    error_rate: float | None
    p99: float | None  # seconds
    base_requests: int
    base_error_rate: float | None
    base_p99: float | None
    problems: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "where": self.where,
            "requests": self.requests,
            "error_rate": self.error_rate,
            "p99": self.p99,
            "base_requests": self.base_requests,
            "base_error_rate": self.base_error_rate,
            "base_p99": self.base_p99,
            "problems": list(self.problems),
        }


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    entry_requests: int
    checks: tuple[Check, ...]
    reason: str  # why it failed or waits; "" when it passed

    def as_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict.value,
            "entry_requests": self.entry_requests,
            "reason": self.reason,
            "checks": [c.as_dict() for c in self.checks],
        }


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}ms"


def _check(where: str, lane: str, base: str, gray: Tally, stable: Tally, limits: Thresholds) -> Check:
    problems: list[str] = []
    rate, base_rate = gray.error_rate, stable.error_rate
    if rate is not None and rate > limits.max_error_rate and (base_rate is None or rate > base_rate):
        problems.append(
            f"{where}@{lane} error rate {_pct(rate)} > {_pct(limits.max_error_rate)} "
            f"({base}: {_pct(base_rate)})"
        )
    p99, base_p99 = gray.quantile(0.99), stable.quantile(0.99)
    if (
        p99 is not None
        and base_p99 is not None
        and base_p99 > 0
        and p99 > limits.min_p99
        and p99 / base_p99 > limits.max_p99_ratio
    ):
        problems.append(
            f"{where}@{lane} p99 {_ms(p99)} > {limits.max_p99_ratio:g} x {base}'s {_ms(base_p99)}"
        )
    return Check(
        where, round(gray.requests), rate, p99, round(stable.requests), base_rate, base_p99, tuple(problems)
    )


def judge(window: Snapshot, lane: str, base: str, limits: Thresholds) -> Judgement:
    """The step's verdict from its *window* of traffic."""
    entry_lane = window.total(proxy="gateway", requested=lane)
    entry_base = window.total(proxy="gateway", requested=base)
    checks = [_check("entry", lane, base, entry_lane, entry_base, limits)]
    for service in window.services("inbound", lane):
        checks.append(
            _check(
                service,
                lane,
                base,
                window.total(proxy="inbound", service=service, served=lane),
                window.total(proxy="inbound", service=service, served=base),
                limits,
            )
        )
    seen = round(entry_lane.requests)
    problems = [p for c in checks for p in c.problems]
    if seen < limits.min_requests:
        return Judgement(
            Verdict.WAIT,
            seen,
            tuple(checks),
            f"{seen} {lane} requests at the entry, fewer than --min-requests {limits.min_requests}",
        )
    if problems:
        return Judgement(Verdict.FAIL, seen, tuple(checks), "; ".join(problems))
    return Judgement(Verdict.PASS, seen, tuple(checks), "")
