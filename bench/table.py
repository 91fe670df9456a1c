"""The benchmark's one plain-text table (and the targets under it), aligned for a terminal.

One row per subject; columns: req/s at 32 connections (median, min-max over the rounds) and at
1 connection, with the ratios against the subject's Envoy peer (``envoy``, ``envoy-hop`` for
the hop subjects, ``grpc-envoy`` for the gRPC ones: the ``/envoy`` columns) and against direct from the same run, p50/p99 at both,
the added p50 per hop at 1 connection, CPU seconds per 10k requests at 32 connections (median,
min-max, ratio to the peer's), peak RSS summed over the subject's processes and of its largest
process, and whether every run routed right. A ratio column shows ``-`` where the reference
subject was not part of the run; a min-max column is empty after a single round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from summary import HIGH, LOW, MIB, Range, SubjectSummary
from targets import TargetCheck

__all__ = ["format_table", "format_targets"]


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _spread(value: Range | None, spec: str) -> str:
    if value is None or value[0] == value[1]:
        return ""
    return f"{value[0]:{spec}}-{value[1]:{spec}}"


def format_table(summaries: Mapping[str, SubjectSummary], vs_peer: Mapping[str, Mapping[str, Any]],
                 vs_direct: Mapping[str, Mapping[str, float | None]]) -> str:
    header = ["subject", f"rps@{HIGH}", "min-max", "/envoy", "/direct", f"rps@{LOW}", "/envoy",
              f"p50@{HIGH}", f"p99@{HIGH}", f"p50@{LOW}", f"p99@{LOW}", "+us/hop",
              "cpu/10k", "min-max", "/envoy", "rss MiB", "max MiB", "routing"]
    rows = [header]
    for name, s in summaries.items():
        e, d = vs_peer.get(name, {}), vs_direct.get(name, {})
        rows.append([
            name, _num(s.rps.get(HIGH), ",.0f"), _spread(s.rps_range.get(HIGH), ",.0f"),
            _x(e.get(f"rps_c{HIGH}")), _x(d.get(f"rps_c{HIGH}")),
            _num(s.rps.get(LOW), ",.0f"), _x(e.get(f"rps_c{LOW}")),
            _num(s.p50_ms.get(HIGH), ".2f"), _num(s.p99_ms.get(HIGH), ".2f"),
            _num(s.p50_ms.get(LOW), ".3f"), _num(s.p99_ms.get(LOW), ".3f"),
            _num(s.added_us_per_hop, ".0f") if s.hops else "",
            _num(s.cpu_per_10k.get(HIGH), ".2f"), _spread(s.cpu_range.get(HIGH), ".2f"),
            _x(e.get(f"cpu_per_request_c{HIGH}")),
            f"{s.rss_total / MIB:.0f}", f"{s.rss_max / MIB:.0f}",
            "ok" if s.routing_ok else "FAILED",
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def format_targets(checks: Sequence[TargetCheck]) -> str:
    width = max((len(c.name) for c in checks), default=0)
    marks = {True: "met", False: "NOT MET", None: "n/a"}
    return "\n".join(f"  {marks[c.met]:<7}  {c.name:<{width}}  {c.measured}" for c in checks)
