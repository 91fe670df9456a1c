"""From the runs of one benchmark to medians per subject, ratios from the same run, and targets.

Each subject was measured ``rounds`` times at each connection count, alternating with the other
subjects (A B A B), so slow drift of a shared machine hits every subject alike; the median of
those runs is the subject's number. Ratios are taken between subjects of *this* run only (never
against remembered numbers): against ``envoy`` and against ``direct``. "Added latency per hop"
is ``(p50 - p50 of the baseline) / hops`` at 1 connection, where the baseline is ``direct`` for
the gateways and Envoy (1 hop) and ``direct-chain`` for the chain (4 proxy traversals).

The targets are the issue's, evaluated on these numbers; they are reported, not enforced.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from runs import Run
from subjects import Target

__all__ = ["HIGH", "LOW", "SubjectSummary", "TargetCheck", "ratios", "summarize", "targets"]

HIGH: Final = 32  # connections of the throughput runs
LOW: Final = 1  # connections of the latency runs
MIB: Final = 1024 * 1024
SIDECAR_RSS_LIMIT_MIB: Final = 42.0


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass(frozen=True, slots=True)
class SubjectSummary:
    name: str
    description: str
    hops: int
    baseline: str | None
    runs: int
    rps: Mapping[int, float | None]  # connections -> median req/s
    p50_ms: Mapping[int, float | None]
    p99_ms: Mapping[int, float | None]
    cpu_per_10k: Mapping[int, float | None]  # CPU seconds per 10k requests
    rss_total: int  # bytes, sum of VmHWM over the subject's processes
    rss_max: int  # bytes, the largest single process
    rss_by_process: Mapping[str, int]
    routing_ok: bool
    added_us_per_hop: float | None = None  # filled by `summarize` once the baseline is known

    def to_json(self) -> dict[str, Any]:
        def per(values: Mapping[int, float | None], digits: int) -> dict[str, float | None]:
            return {f"c{c}": None if v is None else round(v, digits) for c, v in values.items()}

        return {
            "description": self.description, "hops": self.hops, "baseline": self.baseline, "runs": self.runs,
            "rps": per(self.rps, 1), "p50_ms": per(self.p50_ms, 4), "p99_ms": per(self.p99_ms, 4),
            "cpu_seconds_per_10k": per(self.cpu_per_10k, 4),
            "peak_rss_mib": {"total": round(self.rss_total / MIB, 2), "max_process": round(self.rss_max / MIB, 2),
                             "by_process": {k: round(v / MIB, 2) for k, v in sorted(self.rss_by_process.items())}},
            "added_latency_us_per_hop_c1": None if self.added_us_per_hop is None else round(self.added_us_per_hop, 1),
            "routing_ok": self.routing_ok,
        }


def summarize(targets: Mapping[str, Target], runs: Sequence[Run], rss: Mapping[str, Mapping[str, int]]
              ) -> dict[str, SubjectSummary]:
    """Medians per subject (in *targets* order), with the added latency per hop vs its baseline."""
    out: dict[str, SubjectSummary] = {}
    for name, target in targets.items():
        mine = [r for r in runs if r.subject == name]
        levels = sorted({r.connections for r in mine}, reverse=True) or [HIGH, LOW]

        def med(metric: Callable[[Run], float | None], c: int, mine: list[Run] = mine) -> float | None:
            return _median(metric(r) for r in mine if r.connections == c)

        memory = rss.get(name, {})
        out[name] = SubjectSummary(
            name=name, description=target.description, hops=target.hops, baseline=target.baseline,
            runs=len(mine),
            rps={c: med(lambda r: r.wrk.rps, c) for c in levels},
            p50_ms={c: med(lambda r: r.wrk.p50_us / 1000, c) for c in levels},
            p99_ms={c: med(lambda r: r.wrk.p99_us / 1000, c) for c in levels},
            cpu_per_10k={c: med(lambda r: r.cpu_per_10k, c) for c in levels},
            rss_total=sum(memory.values()), rss_max=max(memory.values(), default=0), rss_by_process=dict(memory),
            routing_ok=bool(mine) and all(r.routing.ok for r in mine),
        )
    for name, s in out.items():
        base = out.get(s.baseline or "")
        mine_p50, base_p50 = s.p50_ms.get(LOW), base.p50_ms.get(LOW) if base else None
        if s.hops and mine_p50 is not None and base_p50 is not None:
            out[name] = _with_added(s, (mine_p50 - base_p50) * 1000 / s.hops)
    return out


def _with_added(s: SubjectSummary, added: float) -> SubjectSummary:
    fields = {f: getattr(s, f) for f in SubjectSummary.__dataclass_fields__}
    fields["added_us_per_hop"] = added
    return SubjectSummary(**fields)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(summaries: Mapping[str, SubjectSummary], against: str) -> dict[str, dict[str, float | None]]:
    """Each subject's req/s, p50 and CPU per request divided by those of *against* (same run)."""
    ref = summaries.get(against)
    if ref is None:
        return {}
    out = {}
    for name, s in summaries.items():
        out[name] = {
            f"rps_c{HIGH}": _ratio(s.rps.get(HIGH), ref.rps.get(HIGH)),
            f"rps_c{LOW}": _ratio(s.rps.get(LOW), ref.rps.get(LOW)),
            f"p50_c{LOW}": _ratio(s.p50_ms.get(LOW), ref.p50_ms.get(LOW)),
            f"cpu_per_request_c{HIGH}": _ratio(s.cpu_per_10k.get(HIGH), ref.cpu_per_10k.get(HIGH)),
        }
    return out


@dataclass(frozen=True, slots=True)
class TargetCheck:
    name: str
    measured: str  # human-readable measurement, e.g. "0.72x (gateway 10,100 / envoy 14,000 req/s)"
    value: float | None
    met: bool | None  # None: not measured in this run

    def to_json(self) -> dict[str, Any]:
        return {"target": self.name, "measured": self.measured,
                "value": None if self.value is None else round(self.value, 4), "met": self.met}


def _pair(a: SubjectSummary | None, b: SubjectSummary | None,
          metric: Callable[[SubjectSummary], float | None]) -> tuple[float, float] | None:
    x, y = (metric(a) if a else None), (metric(b) if b else None)
    return (x, y) if x is not None and y is not None and y != 0 else None


def targets(summaries: Mapping[str, SubjectSummary]) -> list[TargetCheck]:
    """The issue's targets, each with its measured value and met / not met / not measured."""
    gw, envoy, chain = summaries.get("gateway"), summaries.get("envoy"), summaries.get("chain")
    out = []
    name = f"gateway req/s at {HIGH} conns >= 0.6x Envoy (goal 1.0x)"
    pair = _pair(gw, envoy, lambda s: s.rps.get(HIGH))
    if pair is None:
        out.append(TargetCheck(name, "not measured", None, None))
    else:
        r = pair[0] / pair[1]
        out.append(TargetCheck(name, f"{r:.2f}x ({pair[0]:,.0f} vs {pair[1]:,.0f} req/s); goal 1.0x "
                               f"{'met' if r >= 1.0 else 'not met'}", r, r >= 0.6))
    name = "gateway CPU per request <= Envoy's"
    pair = _pair(gw, envoy, lambda s: s.cpu_per_10k.get(HIGH))
    if pair is None:
        out.append(TargetCheck(name, "not measured", None, None))
    else:
        r = pair[0] / pair[1]
        out.append(TargetCheck(name, f"{r:.2f}x ({pair[0]:.2f} vs {pair[1]:.2f} CPU s per 10k requests at "
                               f"{HIGH} conns)", r, r <= 1.0))
    for subject in (gw, chain):
        if subject is None:
            continue
        name = f"{subject.name} p50 added latency per hop at {LOW} conn <= Envoy's"
        mine, ref = subject.added_us_per_hop, envoy.added_us_per_hop if envoy else None
        if mine is None or ref is None:
            out.append(TargetCheck(name, "not measured", None, None))
        else:
            out.append(TargetCheck(name, f"{mine:.0f} us vs Envoy's {ref:.0f} us per hop", _ratio(mine, ref),
                                   mine <= max(ref, 0.0)))
    name = f"sidecar peak RSS <= {SIDECAR_RSS_LIMIT_MIB:.0f} MiB"
    sidecars = {k: v for k, v in (chain.rss_by_process if chain else {}).items() if k.startswith("sidecar-")}
    worst = max(sidecars.values(), default=None)
    if worst is None:
        out.append(TargetCheck(name, "not measured", None, None))
    else:
        out.append(TargetCheck(name, f"{worst / MIB:.1f} MiB (largest of {len(sidecars)} sidecar processes)",
                               worst / MIB, worst / MIB <= SIDECAR_RSS_LIMIT_MIB))
    return out
