"""The issue's performance goals, evaluated on one run's numbers (reported, never enforced).

Every goal compares a lane subject with the Envoy doing the same job in the same run (its
``peer``): the gateway with ``envoy`` (same worker count, 2), the sidecar hop pair with the
``envoy-hop`` pair, the gRPC gateway (``grpc-gateway``) with ``grpc-envoy``, each pair loaded
with the same traffic. Each check says the ratio of the medians and, where there was more than
one round, the spread of the round-by-round ratios, so a goal "met" by one lucky round is
visible as such. A goal whose subjects were not part of the run is
``n/a`` (``met`` None).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from summary import HIGH, LOW, MIB, SubjectSummary

__all__ = ["GATEWAY_CPU_GOAL", "GATEWAY_RPS_GOAL", "GRPC_RPS_GOAL", "SIDECAR_RSS_LIMIT_MIB", "TargetCheck", "targets"]

GATEWAY_RPS_GOAL: Final = 1.3  # >= this many times Envoy's req/s at 32 connections
GATEWAY_CPU_GOAL: Final = 0.8  # <= this many times Envoy's CPU per request
SIDECAR_RSS_LIMIT_MIB: Final = 42.0
GRPC_RPS_GOAL: Final = 1.0  # gRPC unary through the gateway: >= this many times Envoy's req/s at 32 connections


@dataclass(frozen=True, slots=True)
class TargetCheck:
    name: str
    measured: str  # human-readable measurement, e.g. "0.72x (10,100 vs 14,000 req/s)"
    value: float | None
    met: bool | None  # None: not measured in this run

    def to_json(self) -> dict[str, Any]:
        return {"target": self.name, "measured": self.measured,
                "value": None if self.value is None else round(self.value, 4), "met": self.met}


def _pair(a: SubjectSummary | None, b: SubjectSummary | None,
          metric: Callable[[SubjectSummary], float | None]) -> tuple[float, float] | None:
    x, y = (metric(a) if a else None), (metric(b) if b else None)
    return (x, y) if x is not None and y is not None and y != 0 else None


def _rounds(peer: Mapping[str, Mapping[str, Any]], subject: str, key: str) -> str:
    spread = peer.get(subject, {}).get(f"{key}_rounds")
    if not spread or spread[0] == spread[1]:
        return ""
    return f", rounds {spread[0]:.2f}-{spread[1]:.2f}x"


def _ratio_check(name: str, a: SubjectSummary | None, b: SubjectSummary | None,
                 metric: Callable[[SubjectSummary], float | None], unit: str, rounds: str,
                 met: Callable[[float], bool]) -> TargetCheck:
    pair = _pair(a, b, metric)
    if pair is None:
        return TargetCheck(name, "not measured", None, None)
    r, spec = pair[0] / pair[1], ",.0f" if unit == "req/s" else ".2f"
    return TargetCheck(name, f"{r:.2f}x{rounds} ({pair[0]:{spec}} vs {pair[1]:{spec}} {unit})", r, met(r))


def _added_check(name: str, mine: SubjectSummary | None, ref: SubjectSummary | None) -> TargetCheck:
    a, b = (mine.added_us_per_hop if mine else None), (ref.added_us_per_hop if ref else None)
    if a is None or b is None or mine is None or ref is None:
        return TargetCheck(name, "not measured", None, None)
    ratio = a / b if b > 0 else None
    return TargetCheck(name, f"{a:.0f} us vs {ref.name}'s {b:.0f} us per hop", ratio, a <= max(b, 0.0))


def targets(summaries: Mapping[str, SubjectSummary], peer: Mapping[str, Mapping[str, Any]]) -> list[TargetCheck]:
    """The issue's goals, each with its measured value and met / not met / not measured.

    *peer* is `summary.peer_ratios` of the same run (for the round-by-round spreads)."""
    gw, envoy, chain = summaries.get("gateway"), summaries.get("envoy"), summaries.get("chain")
    hop, envoy_hop = summaries.get("sidecar-hop"), summaries.get("envoy-hop")
    grpc_gw, grpc_envoy = summaries.get("grpc-gateway"), summaries.get("grpc-envoy")
    rps, cpu = f"rps_c{HIGH}", f"cpu_per_request_c{HIGH}"
    out = [
        _ratio_check(f"gateway req/s at {HIGH} conns >= {GATEWAY_RPS_GOAL}x Envoy's", gw, envoy,
                     lambda s: s.rps.get(HIGH), "req/s", _rounds(peer, "gateway", rps),
                     lambda r: r >= GATEWAY_RPS_GOAL),
        _ratio_check(f"gateway CPU per request <= {GATEWAY_CPU_GOAL}x Envoy's", gw, envoy,
                     lambda s: s.cpu_per_10k.get(HIGH), f"CPU s per 10k requests at {HIGH} conns",
                     _rounds(peer, "gateway", cpu), lambda r: r <= GATEWAY_CPU_GOAL),
        _added_check(f"gateway p50 added latency per hop at {LOW} conn <= Envoy's", gw, envoy),
        _ratio_check("sidecar hop pair (trace headers on) CPU per request <= the Envoy pair's", hop, envoy_hop,
                     lambda s: s.cpu_per_10k.get(HIGH), f"CPU s per 10k requests at {HIGH} conns",
                     _rounds(peer, "sidecar-hop", cpu), lambda r: r <= 1.0),
        _added_check(f"sidecar hop pair p50 added latency per hop at {LOW} conn <= the Envoy pair's", hop, envoy_hop),
        _ratio_check(f"sidecar hop pair req/s at {HIGH} conns >= the Envoy pair's (reported)", hop, envoy_hop,
                     lambda s: s.rps.get(HIGH), "req/s", _rounds(peer, "sidecar-hop", rps), lambda r: r >= 1.0),
        _added_check(f"chain p50 added latency per hop at {LOW} conn <= Envoy's", chain, envoy),
        _ratio_check(f"gRPC unary through the gateway req/s at {HIGH} conns >= {GRPC_RPS_GOAL}x Envoy's", grpc_gw,
                     grpc_envoy, lambda s: s.rps.get(HIGH), "req/s", _rounds(peer, "grpc-gateway", rps),
                     lambda r: r >= GRPC_RPS_GOAL),
        _ratio_check("gRPC unary through the gateway CPU per request <= Envoy's (reported)", grpc_gw, grpc_envoy,
                     lambda s: s.cpu_per_10k.get(HIGH), f"CPU s per 10k requests at {HIGH} conns",
                     _rounds(peer, "grpc-gateway", cpu), lambda r: r <= 1.0),
    ]
    name = f"sidecar peak RSS <= {SIDECAR_RSS_LIMIT_MIB:.0f} MiB"
    sidecars = {(s.name, k): v for s in (chain, hop) if s for k, v in s.rss_by_process.items()
                if k.startswith("sidecar-")}
    worst = max(sidecars.values(), default=None)
    if worst is None:
        out.append(TargetCheck(name, "not measured", None, None))
    else:
        out.append(TargetCheck(name, f"{worst / MIB:.1f} MiB (largest of {len(sidecars)} sidecar processes)",
                               worst / MIB, worst / MIB <= SIDECAR_RSS_LIMIT_MIB))
    return out
