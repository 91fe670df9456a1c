"""The latest full run as a committed Markdown file, and the README's one sentence about it.

Numbers typed into a README go stale the day the code changes. So the README holds no table: it
links ``bench/results/latest.md``, which every full ``make bench`` rewrites with when and where
it ran, the machine's load, the table and the goals; and the one sentence of current ratios in
the README sits between two markers (`README_START` / `README_END`) that the same run rewrites.
A quick or partial run writes neither (only when asked with ``--latest``), so a development run
cannot replace the full run's numbers.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from summary import HIGH, LOW, SubjectSummary
from targets import TargetCheck

__all__ = ["README_END", "README_START", "latest_markdown", "ratio_sentence", "update_readme"]

README_START: Final = "<!-- bench:latest -->"
README_END: Final = "<!-- /bench:latest -->"
README_WIDTH: Final = 115  # the README's prose lines
REGENERATE: Final = "make bench"


def _x(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}x"


def _rounds(entry: Mapping[str, Any], key: str) -> str:
    spread = entry.get(f"{key}_rounds")
    return f" (rounds {spread[0]:.2f}-{spread[1]:.2f})" if spread and spread[0] != spread[1] else ""


def ratio_sentence(summaries: Mapping[str, SubjectSummary], peer: Mapping[str, Mapping[str, Any]]) -> str:
    """One sentence of the run's headline ratios (gateway vs Envoy, sidecar hop pair vs Envoy pair, gRPC
    gateway vs Envoy)."""
    parts = []
    gw, hop, grpc = peer.get("gateway"), peer.get("sidecar-hop"), peer.get("grpc-gateway")
    engine = peer.get("engine-hop")
    rps, cpu = f"rps_c{HIGH}", f"cpu_per_request_c{HIGH}"
    if gw:
        mine, ref = summaries["gateway"].added_us_per_hop, summaries[gw["peer"]].added_us_per_hop
        added = "" if mine is None or ref is None else f", adding {mine:.0f} µs of p50 per hop to Envoy's {ref:.0f}"
        parts.append(f"the gateway (2 workers) reaches {_x(gw[rps])} Envoy's req/s at {HIGH} connections"
                     f"{_rounds(gw, rps)} at {_x(gw[cpu])} its CPU per request{_rounds(gw, cpu)}{added}")
    if hop:
        parts.append(f"a sidecar hop pair with trace headers costs {_x(hop[cpu])} the Envoy pair's CPU per request"
                     f"{_rounds(hop, cpu)}, adds {_x(hop[f'added_p50_per_hop_c{LOW}'])} its p50 per hop and "
                     f"reaches {_x(hop[rps])} its req/s"
                     + (f" (lane's engine alone, without the request logic: {_x(engine[cpu])} its CPU per request"
                        f"{_rounds(engine, cpu)})" if engine else ""))
    if grpc:
        parts.append(f"gRPC unary calls through the gateway reach {_x(grpc[rps])} Envoy's req/s{_rounds(grpc, rps)} "
                     f"at {_x(grpc[cpu])} its CPU per request{_rounds(grpc, cpu)}")
    if not parts:
        return "This run measured neither the gateway nor the sidecar hop against Envoy."
    return "Against Envoy in the same run, " + "; ".join(parts) + "."


def latest_markdown(document: Mapping[str, Any], sentence: str, checks: Sequence[TargetCheck],
                    busy: str | None, json_name: str) -> str:
    """bench/results/latest.md for *document* (the run's JSON document)."""
    m, st = document["machine"], document["settings"]
    load = m.get("load_average_at_start")
    others = [r["other_cores"] for r in document["runs"] if r.get("other_cores") is not None]
    start = m.get("other_cores_at_start")
    quiet = (f"load average {load[0]:.2f} at the start" if load else "load average unknown") + (
        f", other processes {start:.2f} cores just before" if start is not None else "") + (
        f", other processes at most {max(others):.2f} cores during the measured runs" if others else "")
    marks = {True: "met", False: "**not met**", None: "n/a"}
    h2load = f", {m['h2load']} (gRPC calls)" if m.get("h2load") else ""
    grpc_subjects = [name for name, load in (st.get("load_by_subject") or {}).items() if load == "h2load"]
    grpc = f"; {', '.join(f'`{s}`' for s in grpc_subjects)} loaded with gRPC unary calls by h2load" if grpc_subjects else ""
    skipped = "".join(f"\n- **Skipped:** `{name}`: {why.removeprefix('skipped: ')}"
                      for name, why in (st.get("skipped_subjects") or {}).items())
    goals = "\n".join(f"| {c.name} | {c.measured} | {marks[c.met]} |" for c in checks)
    return f"""# Latest `make bench` results

Written by `bench/compare.py`; regenerate with `{REGENERATE}` (= `python bench/compare.py`) on a quiet machine.
Do not edit by hand.

- **When:** {document['started_utc']} (UTC), {document['seconds']:.0f} s
- **Where:** {m['cpu_model']}, {m['cores']} cores shared by wrk, the stubs and the subject; {m['platform']};
  Python {m['python']}, Envoy {m['envoy']}, {str(m['wrk']).split(' Copyright')[0]}{h2load}
- **Code:** lane commit `{m['lane_commit']}`, `{m.get('lane_build', 'lane (build not recorded)')}`
- **Stub backends:** {st.get('stubs', '?')}
- **Settings:** {st['rounds']} round(s) × {st['duration_s']} s per subject at {HIGH} and {LOW} connection(s),
  subjects alternating every run; the hop pairs, `chain` and `direct-chain` loaded with fresh trace headers
  per request ({', '.join(st.get('hop_trace_headers') or []) or 'none'}){grpc}
- **Machine load:** {busy.removeprefix('note: ') if busy else 'quiet: ' + quiet}
- **Routing:** {'every run routed every request right' if document['routing_ok'] else '**FAILED** (see the JSON)'}
- **Full results:** `{json_name}` (not committed; its `runs` hold every wrk and h2load run){skipped}

{sentence}

Medians over the rounds, min-max beside them; `/envoy` is the ratio against the subject's Envoy peer
(`envoy`; `envoy-hop` for `sidecar-hop`; `grpc-envoy` for `grpc-gateway`) from the same run; CPU seconds per 10k requests; peak RSS.

```
{document['table']}
```

| goal | measured | |
|---|---|---|
{goals}
"""


def update_readme(readme: Path, sentence: str) -> bool:
    """Put *sentence* between the README's markers, wrapped like the prose around it; False (README
    untouched) when the markers are missing."""
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    column = start - (text.rfind("\n", 0, start) + 1)
    lead = " " * (column + len(README_START))  # the first line starts after the marker
    wrapped = textwrap.fill(sentence, README_WIDTH - len(README_END), initial_indent=lead)[len(lead):]
    new = text[:start + len(README_START)] + wrapped + text[end:]
    if new != text:
        readme.write_text(new, encoding="utf-8")
    return True
