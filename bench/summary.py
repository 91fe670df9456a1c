"""From the runs of one benchmark to medians per subject, ratios from the same run, and targets.

Each subject was measured ``rounds`` times at each connection count, alternating with the other
subjects (A B A B), so slow drift of a shared machine hits every subject alike; the median of
those runs is the subject's number. Ratios are taken between subjects of *this* run only (never
against remembered numbers): against ``envoy`` and against ``direct``. "Added latency per hop"
is ``(p50 - p50 of the baseline) / hops`` at 1 connection, where the baseline is ``direct`` for
the gateways and Envoy (1 hop) and ``direct-chain`` for the chain (4 proxy traversals).

Next to each median, the min-max over the rounds; and for each subject with an Envoy ``peer``
(`subjects.Target.peer`), the ratios against it taken round by round (`peer_ratios`): a ratio's
spread over rounds says how much one number can be trusted. The issue's targets are evaluated on
these numbers in `bench/targets.py`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from runs import Run
from subjects import Target

__all__ = ["HIGH", "LOW", "MIB", "Range", "SubjectSummary", "peer_ratios", "ratios", "summarize"]

HIGH: Final = 32  # connections of the throughput runs
LOW: Final = 1  # connections of the latency runs
MIB: Final = 1024 * 1024
Range = tuple[float, float]  # (min, max) over the rounds


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _range(values: Iterable[float | None]) -> Range | None:
    present = [v for v in values if v is not None]
    return (min(present), max(present)) if present else None


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
    peer: str | None = None
    rps_range: Mapping[int, Range | None] = field(default_factory=dict)  # connections -> (min, max)
    p50_range: Mapping[int, Range | None] = field(default_factory=dict)
    cpu_range: Mapping[int, Range | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def per(values: Mapping[int, float | None], digits: int) -> dict[str, float | None]:
            return {f"c{c}": None if v is None else round(v, digits) for c, v in values.items()}

        def spread(values: Mapping[int, Range | None], digits: int) -> dict[str, list[float] | None]:
            return {f"c{c}": None if v is None else [round(v[0], digits), round(v[1], digits)]
                    for c, v in values.items()}

        return {
            "description": self.description, "hops": self.hops, "baseline": self.baseline, "runs": self.runs,
            "rps": per(self.rps, 1), "p50_ms": per(self.p50_ms, 4), "p99_ms": per(self.p99_ms, 4),
            "cpu_seconds_per_10k": per(self.cpu_per_10k, 4),
            "peak_rss_mib": {"total": round(self.rss_total / MIB, 2), "max_process": round(self.rss_max / MIB, 2),
                             "by_process": {k: round(v / MIB, 2) for k, v in sorted(self.rss_by_process.items())}},
            "added_latency_us_per_hop_c1": None if self.added_us_per_hop is None else round(self.added_us_per_hop, 1),
            "routing_ok": self.routing_ok, "peer": self.peer,
            "range_over_rounds": {"rps": spread(self.rps_range, 1), "p50_ms": spread(self.p50_range, 4),
                                  "cpu_seconds_per_10k": spread(self.cpu_range, 4)},
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

        def spread(metric: Callable[[Run], float | None], c: int, mine: list[Run] = mine) -> Range | None:
            return _range(metric(r) for r in mine if r.connections == c)

        memory = rss.get(name, {})
        out[name] = SubjectSummary(
            name=name, description=target.description, hops=target.hops, baseline=target.baseline,
            runs=len(mine),
            rps={c: med(lambda r: r.wrk.rps, c) for c in levels},
            p50_ms={c: med(lambda r: r.wrk.p50_us / 1000, c) for c in levels},
            p99_ms={c: med(lambda r: r.wrk.p99_us / 1000, c) for c in levels},
            cpu_per_10k={c: med(lambda r: r.cpu_per_10k, c) for c in levels},
            rss_total=sum(memory.values()), rss_max=max(memory.values(), default=0), rss_by_process=dict(memory),
            routing_ok=bool(mine) and all(r.routing.ok for r in mine), peer=target.peer,
            rps_range={c: spread(lambda r: r.wrk.rps, c) for c in levels},
            p50_range={c: spread(lambda r: r.wrk.p50_us / 1000, c) for c in levels},
            cpu_range={c: spread(lambda r: r.cpu_per_10k, c) for c in levels},
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


def _per_round(runs: Sequence[Run], name: str, c: int, metric: Callable[[Run], float | None]
               ) -> dict[int, float]:
    out = {}
    for r in runs:
        if r.subject == name and r.connections == c:
            value = metric(r)
            if value is not None:
                out[r.round] = value
    return out


def _round_ratios(runs: Sequence[Run], name: str, peer: str, c: int,
                  metric: Callable[[Run], float | None]) -> Range | None:
    """min-max over the rounds of (this subject's value / its peer's value in the same round)."""
    mine, theirs = _per_round(runs, name, c, metric), _per_round(runs, peer, c, metric)
    return _range(mine[k] / theirs[k] for k in mine if theirs.get(k))


def peer_ratios(summaries: Mapping[str, SubjectSummary], runs: Sequence[Run]) -> dict[str, dict[str, Any]]:
    """Each subject against its Envoy peer: ratio of the medians and the per-round min-max.

    Keys: ``rps_c32``, ``rps_c1``, ``cpu_per_request_c32``, ``p50_c1``, ``added_p50_per_hop_c1`` (ratios of
    medians) and the first four again with ``_rounds`` (``[min, max]`` of the round-by-round
    ratios; None without a common round)."""
    metrics: dict[str, tuple[int, Callable[[Run], float | None], Callable[[SubjectSummary], float | None]]] = {
        f"rps_c{HIGH}": (HIGH, lambda r: r.wrk.rps, lambda s: s.rps.get(HIGH)),
        f"rps_c{LOW}": (LOW, lambda r: r.wrk.rps, lambda s: s.rps.get(LOW)),
        f"cpu_per_request_c{HIGH}": (HIGH, lambda r: r.cpu_per_10k, lambda s: s.cpu_per_10k.get(HIGH)),
        f"p50_c{LOW}": (LOW, lambda r: r.wrk.p50_us, lambda s: s.p50_ms.get(LOW)),
    }
    out: dict[str, dict[str, Any]] = {}
    for name, s in summaries.items():
        ref = summaries.get(s.peer or "")
        if ref is None:
            continue
        entry: dict[str, Any] = {"peer": ref.name}
        for key, (c, per_run, per_summary) in metrics.items():
            entry[key] = _ratio(per_summary(s), per_summary(ref))
            spread = _round_ratios(runs, name, ref.name, c, per_run)
            entry[f"{key}_rounds"] = None if spread is None else list(spread)
        entry[f"added_p50_per_hop_c{LOW}"] = (
            _ratio(s.added_us_per_hop, ref.added_us_per_hop)
            if s.added_us_per_hop is not None and ref.added_us_per_hop and ref.added_us_per_hop > 0 else None)
        out[name] = entry
    return out
