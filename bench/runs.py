"""One measured load run of one subject (wrk, or h2load for gRPC), and the check that it routed every request right.

A benchmark that does not check routing rewards a proxy for sending everything to one place. So
each run is held to its target's expectations (`subjects.Target.expect`), from two independent
counts taken around the run:

* the load generator's (wrk's, or h2load's for the gRPC subjects, in wrk's shape): no socket
  errors and no status errors (a misrouted or mis-tagged request is a 421);
* the stub backends': every instance answered only right-lane requests (4xx delta 0), the
  instances that must get traffic got about their share of it (gray and plain interleave, so
  about half each; +/- 5 points; for h2load's side-by-side processes, which finish different numbers
  of calls, each instance's share is one process's, matched by rank), no other instance got any, and together they answered at
  least every request wrk counted (the few still in flight when wrk stopped may be extra). For
  gRPC this also catches the proxy's own answers: a gRPC error is HTTP 200 (trailers-only with a
  ``grpc-status``), which h2load counts as an answer, but no stub gave it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stub_backend import Instance, InstanceCounts
from subjects import Target
from wrk import WrkResult

__all__ = ["SHARE_TOLERANCE", "Routing", "Run", "check_routing"]

SHARE_TOLERANCE = 0.05


@dataclass(frozen=True, slots=True)
class Routing:
    ok: bool
    answered: Mapping[str, int]  # instance -> right-lane answers during the run
    refused: Mapping[str, int]  # instance -> wrong-lane answers (421) during the run
    problems: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "answered": dict(self.answered), "refused": dict(self.refused),
                "problems": list(self.problems)}


def check_routing(target: Target, wrk: WrkResult, connections: int, before: Mapping[Instance, InstanceCounts],
                  after: Mapping[Instance, InstanceCounts]) -> Routing:
    """Whether the run behind *wrk* (wrk's or h2load's counts, `Target.load`) landed where *target* says
    (see the module docstring)."""
    delta = {i: after[i] - before[i] for i in after}
    problems: list[str] = []
    tool = target.load
    if wrk.socket_errors:
        problems.append(f"{tool} saw {wrk.socket_errors} socket errors (connect {wrk.connect_errors}, read "
                        f"{wrk.read_errors}, write {wrk.write_errors}, timeout {wrk.timeouts})")
    if wrk.status_errors:
        problems.append(f"{tool} saw {wrk.status_errors} answers with status >= 400 (421 = wrong lane or tag)")
    refused = {str(i): d.refused for i, d in delta.items() if d.refused}
    if refused:
        problems.append("stub instances refused wrong-lane requests: "
                        + ", ".join(f"{name} {count}" for name, count in sorted(refused.items())))
    total = sum(d.ok for d in delta.values())
    if wrk.requests == 0:
        problems.append(f"{tool} completed no request")
    elif total < wrk.requests:
        problems.append(f"the stubs answered {total} requests, fewer than the {wrk.requests} {tool} counted")
    elif total > wrk.requests + connections * 4 + 100:
        problems.append(f"the stubs answered {total} requests, far more than the {wrk.requests} {tool} counted")
    expect = dict(target.expect)
    served = sorted((i for i, share in expect.items() if share), key=lambda i: delta[i].ok if i in delta else 0)
    if wrk.shares and len(wrk.shares) == len(served):
        # side by side (h2load): the instance that answered most should have the busiest process's share, etc.
        expect.update(zip(served, sorted(wrk.shares), strict=True))
    for instance, d in sorted(delta.items()):
        share = expect.get(instance, 0.0)
        if share == 0.0 and d.ok:
            problems.append(f"{instance} answered {d.ok} requests but should get none")
        elif share and total and abs(d.ok / total - share) > SHARE_TOLERANCE:
            problems.append(f"{instance} answered {d.ok / total:.1%} of the requests, expected {share:.0%}")
    return Routing(not problems, {str(i): d.ok for i, d in sorted(delta.items())}, refused, tuple(problems))


@dataclass(frozen=True, slots=True)
class Run:
    round: int
    subject: str
    connections: int
    wrk: WrkResult  # the load generator's counts (h2load's too, in wrk's shape)
    cpu_seconds: float  # user + system of the subject's processes during the run
    routing: Routing
    other_cores: float | None = None  # cores other processes used meanwhile (`bench/busy.py`)

    @property
    def cpu_per_10k(self) -> float | None:
        return self.cpu_seconds / self.wrk.requests * 10_000 if self.wrk.requests else None

    def to_json(self) -> dict[str, Any]:
        w = self.wrk
        return {
            "round": self.round, "subject": self.subject, "connections": self.connections,
            "requests": w.requests, "seconds": round(w.seconds, 3), "rps": round(w.rps, 1),
            "p50_ms": w.p50_us / 1000, "p90_ms": w.p90_us / 1000, "p99_ms": w.p99_us / 1000,
            "mean_ms": round(w.mean_us / 1000, 4),
            "errors": {"connect": w.connect_errors, "read": w.read_errors, "write": w.write_errors,
                       "timeout": w.timeouts, "status": w.status_errors},
            "cpu_seconds": round(self.cpu_seconds, 4),
            "cpu_seconds_per_10k": None if self.cpu_per_10k is None else round(self.cpu_per_10k, 4),
            "routing": self.routing.to_json(),
            "other_cores": None if self.other_cores is None else round(self.other_cores, 3),
        }
