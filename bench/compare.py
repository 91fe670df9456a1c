"""The side-by-side benchmark: lane's gateway and sidecars against Envoy and against direct.

One command starts, on 127.0.0.1 only, the cheapest stub backends (one nginx worker, else Envoy
``direct_response`` listeners; both answer 421 to a request of the wrong lane), then the subjects
(`bench/subjects.py`): ``direct``, ``envoy`` (Envoy 1.40, 2 workers, the gateway Lua and routes
``lane mesh render`` emits), ``gateway`` (``lane gateway --workers 2``), ``gateway-1w``,
``gateway-aiohttp`` (when ``lane gateway`` has ``--core``), ``chain`` (gateway -> sidecar -> app
-> sidecar -> sidecar -> app), ``direct-chain`` (the same apps, no proxies), and the sidecar hop
pair ``sidecar-hop`` (outbound + inbound sidecar) against ``envoy-hop`` (an Envoy pair with the
rendered mesh routes), loaded with fresh trace headers per request, and ``grpc-gateway`` (``lane
gateway --workers 2`` routing gRPC unary calls over h2c) against ``grpc-envoy`` (the same Envoy,
HTTP/2 upstream clusters). wrk drives each with the same interleaved gray + plain traffic
(h2load with real gRPC unary calls for the gRPC pair, `bench/h2load.py`), subjects alternating
A B A B over the rounds, at 32 connections (2 threads) and at 1 (1 thread), for a bounded time
after a short warm-up. Every run must route every request right (`bench/runs.py`): no free speed
from misrouting; a gRPC subject must first answer real grpcio calls OK (`bench/grpc_check.py`).
Where h2load cannot be had (or the stubs are Envoy's), the gRPC subjects are skipped with a note.

It prints one table (medians and min-max over the rounds; ratios against each subject's Envoy
peer and against direct from this run), the issue's goals as met / not met, a note when other
processes kept the machine busy (`bench/busy.py`), and writes everything as JSON (and an SVG
chart beside it) so runs can be compared over time. A full run also rewrites
``bench/results/latest.md`` and the README's sentence about it (`bench/latest.py`). Exit status
1 when any run misrouted, else 0.

    python bench/compare.py                 # full: 3 rounds x 10 s, every subject, extra sections
    python bench/compare.py --quick         # 1 round x 3 s, fewer subjects, no extra sections
    python bench/compare.py --subjects direct,envoy,gateway --rounds 1 --duration 2
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import aiohttp
import uvloop
from busy import BusySnapshot, busy_note, machine_load, other_cores, sample_other_cores
from envoy_proc import envoy_version
from grpc_check import GrpcCheckError, check_grpc
from h2load import H2loadError, ensure_h2load, h2load_version, run_h2load
from latest import latest_markdown, ratio_sentence, update_readme
from measure import ProcessTree
from runs import Run, check_routing
from sections import SECTIONS, machine_info, run_section
from subjects import (
    A_BASE_GRPC,
    A_GRAY_GRPC,
    ALL_SUBJECTS,
    GRPC_SUBJECTS,
    QUICK_SUBJECTS,
    STUB_KINDS,
    Lab,
    Target,
    has_core_option,
)
from summary import HIGH, LOW, peer_ratios, ratios, summarize
from svg_chart import Bar, render_svg
from table import format_table, format_targets
from targets import targets
from wrk import WrkResult, ensure_wrk, run_wrk, wrk_version

__all__ = ["main"]

HERE: Final = Path(__file__).resolve().parent
LATEST: Final = HERE / "results" / "latest.md"
README: Final = HERE.parent / "README.md"
SCHEMA: Final = "lane-bench-compare/1"
INTERRUPTED: list[int] = []  # the signals that interrupted the run (set by the loop's signal handler)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _subjects(text: str | None, quick: bool, core_option: bool) -> list[str]:
    if text is None:
        chosen = list(QUICK_SUBJECTS if quick else ALL_SUBJECTS)
        return [s for s in chosen if s != "gateway-aiohttp" or core_option]
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in ALL_SUBJECTS]
    if unknown or not chosen:
        raise SystemExit(f"error: unknown subject(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(ALL_SUBJECTS)}")
    if "gateway-aiohttp" in chosen and not core_option:
        raise SystemExit("error: gateway-aiohttp needs `lane gateway --core`, which this lane does not have yet")
    return list(dict.fromkeys(chosen))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="development mode: 1 round of 3 s, fewer subjects")
    parser.add_argument("--rounds", type=int, help="rounds over every subject (full 3, quick 1)")
    parser.add_argument("--duration", type=int, help="seconds per measured wrk run (full 10, quick 3)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of unmeasured load before each run (default 1)")
    parser.add_argument("--subjects", help=f"comma-separated, from {', '.join(ALL_SUBJECTS)} "
                        f"(default: all; quick: {', '.join(QUICK_SUBJECTS)})")
    parser.add_argument("--with-soak", action=argparse.BooleanOptionalAction, default=None,
                        help=f"also run bench/{{{','.join(SECTIONS)}}}.py --json if present, with --quick when "
                        "this is --quick (default: on, off with --quick)")
    parser.add_argument("--section-timeout", type=float, default=1200, help="seconds per extra section (default 1200)")
    parser.add_argument("--json", dest="json_path", help="write the results here (default "
                        "bench/results/compare-<UTC time>.json)")
    parser.add_argument("--no-svg", action="store_true", help="do not draw the SVG chart next to the JSON")
    parser.add_argument("--stubs", choices=STUB_KINDS, default="auto",
                        help="stub backends: nginx (installed with apt-get as root when missing), envoy, or auto "
                        "(nginx, else envoy; default)")
    parser.add_argument("--latest", dest="latest_path", help="also write the Markdown summary here (default: "
                        "bench/results/latest.md and the README sentence, on a full run with the default subjects)")
    parser.add_argument("--no-latest", action="store_true", help="a full run does not rewrite bench/results/latest.md "
                        "and the README sentence")
    args = parser.parse_args(argv)
    args.official = not args.quick and args.subjects is None and args.latest_path is None and not args.no_latest
    args.latest_path = Path(args.latest_path) if args.latest_path else LATEST if args.official else None
    args.rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    args.duration = args.duration if args.duration is not None else (3 if args.quick else 10)
    args.with_soak = args.with_soak if args.with_soak is not None else not args.quick
    if args.rounds < 1 or args.duration < 1 or args.warmup < 0:
        parser.error("--rounds and --duration must be at least 1, --warmup at least 0")
    return args


async def _load(target: Target, exe: str, h2load: str | None, workdir: Path, connections: int,
                seconds: int) -> WrkResult:
    """One bounded run of *target*'s load generator (wrk, or h2load for the gRPC subjects)."""
    if target.load == "h2load":
        assert h2load is not None  # the gRPC subjects are skipped without it
        return await run_h2load(h2load, target.url, connections=connections, seconds=seconds,
                                requests=target.requests, workdir=workdir)
    return await run_wrk(exe, target.url, connections=connections, seconds=seconds, requests=target.requests,
                         trace=target.trace)


def _on_signal(task: asyncio.Task[Any], signum: int) -> None:
    if not INTERRUPTED:
        say(f"{signal.Signals(signum).name}: stopping every benchmark process ...")
    INTERRUPTED.append(signum)
    task.cancel()


async def measure(args: argparse.Namespace, exe: str, h2load: str | None, subjects: list[str]
                  ) -> tuple[dict[str, Target], list[Run], dict[str, dict[str, int]], str, dict[str, str]]:
    """Start everything, run the rounds, read peak memory, stop everything (whatever happens).
    Also returns the subjects the stubs could not serve (name -> why).

    SIGINT (Ctrl-C) and SIGTERM cancel this task, so the ``finally`` of every block below stops
    what it started, wrk included."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _on_signal, task, signum)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="lane-bench-compare-") as tmp:
        async with Lab(Path(tmp), subjects, args.stubs) as lab:
            found = await lab.start(say)
            stubs = lab.stubs
            assert stubs is not None
            stub_kind = stubs.kind + (f" ({lab.stub_note})" if lab.stub_note else "")
            trees = {name: ProcessTree(t.processes) for name, t in found.items()}
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                for name, target in found.items():
                    if target.load == "h2load":
                        say(f"checking {name} with real grpcio calls ...")
                        await check_grpc(target, stubs, session, {"gray": ("xiaoming", A_GRAY_GRPC),
                                                                  "plain": ("", A_BASE_GRPC)})
                for rnd in range(1, args.rounds + 1):
                    for conns in (HIGH, LOW):
                        for name, target in found.items():
                            say(f"round {rnd}/{args.rounds}: {name}, {conns} conn{'s' * (conns > 1)} ...")
                            if args.warmup:
                                await _load(target, exe, h2load, Path(tmp), conns, args.warmup)
                            before = await stubs.counts(session)
                            cpu_before, busy_before = trees[name].cpu(), BusySnapshot.take()
                            result = await _load(target, exe, h2load, Path(tmp), conns, args.duration)
                            cpu, others = cpu_before.until(trees[name].cpu()), other_cores(busy_before,
                                                                                         BusySnapshot.take())
                            after = await stubs.counts(session)
                            run = Run(rnd, name, conns, result, cpu, check_routing(target, result, conns, before, after),
                                      others)
                            runs.append(run)
                            say(f"    {result.rps:,.0f} req/s, p50 {result.p50_us / 1000:.3f} ms, p99 "
                                f"{result.p99_us / 1000:.3f} ms, {run.cpu_per_10k or 0:.2f} CPU s/10k, "
                                f"others {others or 0:.2f} cores, routing "
                                + ("ok" if run.routing.ok else "FAILED: " + "; ".join(run.routing.problems)))
            rss = {name: tree.peak_rss() for name, tree in trees.items()}
            skipped = dict(lab.skipped)
        say("every benchmark process stopped")
    return found, runs, rss, stub_kind, skipped


def _default_json_path() -> Path:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return HERE / "results" / f"compare-{stamp}.json"


def _svg(path: Path, document: dict[str, Any]) -> None:
    bars = [Bar(name, s["rps"].get(f"c{HIGH}") or 0.0, s["p50_ms"].get(f"c{HIGH}") or 0.0,
                s["p99_ms"].get(f"c{HIGH}") or 0.0) for name, s in document["subjects"].items()]
    notes, latency = [], []
    for t in document["targets"]:  # the chart has room for 4 lines: the per-hop latency targets share one
        mark = "met" if t["met"] else "NOT MET" if t["met"] is False else "n/a"
        if "added latency per hop" in t["target"]:
            latency.append(f"{t['target'].split()[0]} {t['measured'].split(' vs ')[0]} ({mark})")
            continue
        notes.append(f"{mark}: {t['target']}: {t['measured']}")
    if latency:
        envoy_us = document["subjects"].get("envoy", {}).get("added_latency_us_per_hop_c1")
        notes.insert(2, f"p50 added latency per hop at {LOW} conn vs Envoy's "
                     f"{'-' if envoy_us is None else f'{envoy_us:.0f}'} us: " + ", ".join(latency))
    grpc = "h2load" in document["settings"]["load_by_subject"].values()
    title = (f"lane vs Envoy on 127.0.0.1, {HIGH} connections, median of {document['settings']['rounds']} "
             f"x {document['settings']['duration_s']} s (wrk{'; gRPC: h2load' if grpc else ''})")
    path.write_text(render_svg(title, bars, notes), encoding="utf-8")


def _section_status(result: dict[str, Any]) -> str:
    if "result" in result:
        return f"ran (exit {result['exit_code']}, result in the JSON)"
    return str(result.get("skipped") or result.get("failed"))


def _h2load(subjects: list[str]) -> tuple[str | None, dict[str, str]]:
    """h2load when a gRPC subject is chosen (installed when missing), else None and those subjects skipped."""
    chosen = [s for s in subjects if s in GRPC_SUBJECTS]
    if not chosen:
        return None, {}
    try:
        return ensure_h2load(), {}
    except H2loadError as exc:
        why = f"skipped: h2load (Debian's nghttp2-client) unavailable: {str(exc).splitlines()[0]}"
        say(f"{', '.join(chosen)} {why}")
        return None, dict.fromkeys(chosen, why)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exe = ensure_wrk()
    core_option = has_core_option()
    subjects = _subjects(args.subjects, args.quick, core_option)
    h2load, skipped = _h2load(subjects)
    subjects = [s for s in subjects if s not in skipped]
    if not subjects:
        say("error: no subject left to measure: " + "; ".join(f"{k} {v}" for k, v in skipped.items()))
        return 2
    info = machine_info(envoy_version(), wrk_version(exe))
    info["h2load"] = h2load_version(h2load) if h2load else None
    others_at_start = sample_other_cores()
    info["other_cores_at_start"] = None if others_at_start is None else round(others_at_start, 3)
    started = time.time()
    say(f"lane bench compare: {', '.join(subjects)}; {args.rounds} round(s) x {args.duration} s at {HIGH} and "
        f"{LOW} connection(s), {args.warmup} s warm-up each; {info['cores']} cores, Envoy {info['envoy']}")
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            found, runs, rss, stub_kind, lab_skipped = runner.run(measure(args, exe, h2load, subjects))
    except GrpcCheckError as exc:
        say(f"error: {exc} (every benchmark process was stopped; no results written)")
        return 1
    except BaseException:
        if INTERRUPTED:  # whatever broke while stopping (a child that got the signal too) is expected
            say("interrupted: every benchmark process was stopped; no results written")
            return 128 + INTERRUPTED[0]
        raise
    skipped |= lab_skipped
    if not found:  # every chosen subject was a gRPC one, and the stubs could not serve gRPC
        say("error: no subject left to measure: " + "; ".join(f"{k} {v}" for k, v in skipped.items()))
        return 2
    summaries = summarize(found, runs, rss)
    vs_envoy, vs_direct, vs_peer = ratios(summaries, "envoy"), ratios(summaries, "direct"), peer_ratios(summaries, runs)
    checks = targets(summaries, vs_peer)
    load_at_end = machine_load()
    info["load_average_at_end"] = list(load_at_end) if load_at_end else None
    busy = busy_note(info.get("load_average_at_start"), info.get("cores") or 1, (r.other_cores for r in runs),
                     others_at_start)
    sections: dict[str, Any] = {}
    for name in SECTIONS if args.with_soak else ():
        say(f"section {name} ...")
        sections[name] = run_section(name, args.section_timeout, quick=args.quick)
    if not args.with_soak:
        sections = {name: {"skipped": "not run (--quick or --no-with-soak)"} for name in SECTIONS}
    table = format_table(summaries, vs_peer, vs_direct)
    routing_ok = bool(runs) and all(r.routing.ok for r in runs)
    document = {
        "schema": SCHEMA,
        "started_utc": datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "machine": info,
        "settings": {"rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
                     "connections": [HIGH, LOW], "threads": {str(HIGH): 2, str(LOW): 1}, "quick": args.quick,
                     "subjects": list(found), "skipped_subjects": skipped, "gateway_core_option": core_option,
                     "lane_core_env": os.environ.get("LANE_CORE"), "stubs": stub_kind,
                     "hop_trace_headers": next((list(t.trace) for t in found.values() if t.trace), []),
                     "trace_headers_by_subject": {name: list(t.trace) for name, t in found.items()},
                     "load_by_subject": {name: t.load for name, t in found.items()}},
        "routing_ok": routing_ok,
        "subjects": {name: s.to_json() for name, s in summaries.items()},
        "ratios": {"vs_envoy": vs_envoy, "vs_direct": vs_direct, "vs_peer": vs_peer},
        "busy_note": busy,
        "targets": [c.to_json() for c in checks],
        "runs": [r.to_json() for r in runs],
        "sections": sections,
        "table": table,
    }
    path = Path(args.json_path) if args.json_path else _default_json_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    notes = [f"{name}: {t.description}" + "".join(f"; {note}" for note in t.notes) for name, t in found.items()]
    notes += [f"{name}: {why}" for name, why in skipped.items()]
    grpc = any(t.load == "h2load" for t in found.values())
    print(f"lane vs Envoy vs direct on 127.0.0.1 -- median of {args.rounds} round(s) x {args.duration} s, wrk "
          f"-t2 -c{HIGH} / -t1 -c{LOW}" + (f" (gRPC: h2load, gray and plain {HIGH // 2} clients each side by side / "
                                           f"{LOW} after another)" if grpc else "")
          + f"; {info['cores']} cores shared with the load generator; req/s, ms, CPU s per 10k requests "
          f"at {HIGH} conns, peak RSS (VmHWM) of the subject's processes")
    print(table)
    print("\ntargets (ratios from this run; reported, not enforced):")
    print(format_targets(checks))
    print("\n" + "\n".join(notes))
    print("\nsections: " + "; ".join(f"{name} {_section_status(result)}" for name, result in sections.items()))
    print(f"routing under load: {'every run routed every request right' if routing_ok else 'FAILED (see JSON)'}")
    print(f"stub backends: {stub_kind}")
    if busy:
        print(busy)
    print(f"results: {path}", flush=True)
    if args.latest_path is not None:
        sentence = ratio_sentence(summaries, vs_peer)
        args.latest_path.parent.mkdir(parents=True, exist_ok=True)
        args.latest_path.write_text(latest_markdown(document, sentence, checks, busy, path.name), encoding="utf-8")
        say(f"summary: {args.latest_path}")
        if args.official and update_readme(README, sentence):
            say(f"README sentence updated: {README}")
    if not args.no_svg:
        _svg(path.with_suffix(".svg"), document)
        say(f"chart: {path.with_suffix('.svg')}")
    return 0 if routing_ok else 1


if __name__ == "__main__":
    sys.exit(main())
