"""``lane graph``: draw the live lane topology of running proxies (SVG, DOT or JSON).

``--admin URL`` (repeatable) names a proxy's admin listener -- or a `lane demo` admin, which stands for
all its proxies. Each is read twice, ``--window`` seconds apart, for the rates (`lane.graph.model`). Or
``--prometheus URL`` reads the same series from a Prometheus server that scrapes the proxies
(`lane.graph.prometheus`). ``--watch SECONDS`` redraws until interrupted. Nothing is changed anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from pathlib import Path
from urllib.parse import urlsplit

from lane.graph.model import Graph, collect
from lane.graph.prometheus import collect_prometheus
from lane.graph.render import render_dot, render_svg

__all__ = ["add_arguments", "render", "run"]

FORMATS = ("svg", "dot", "json")


def _admin_url(text: str) -> str:
    url = text if "://" in text else f"http://{text}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"expected an http(s) URL like http://127.0.0.1:9901, got {text!r}")
    return url.rstrip("/")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (0 or more), got {text!r}") from None
    if not 0 <= value < 3600:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected seconds from 0 to 3600, got {text!r}")
    return value


def _interval(text: str) -> float:
    value = _seconds(text)
    if value < 0.1:  # 0 would redraw in a busy loop
        raise argparse.ArgumentTypeError(f"expected at least 0.1 seconds between drawings, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--admin", type=_admin_url, action="append", metavar="URL",
                        help="a proxy's admin URL, or a `lane demo` admin URL (all its proxies); repeatable")
    source.add_argument("--prometheus", type=_admin_url, metavar="URL",
                        help="a Prometheus server that scrapes the proxies (e.g. http://prometheus:9090)")
    parser.add_argument("--format", choices=FORMATS, default="svg", help="svg (default, for people), dot or json")
    parser.add_argument("--output", "-o", help="write here (default: standard output)")
    parser.add_argument("--window", type=_seconds,
                        help="seconds between the two readings the rates come from (default 1 with --admin, "
                             "60 with --prometheus; 0: totals only)")
    parser.add_argument("--watch", type=_interval, metavar="SECONDS",
                        help="redraw every SECONDS until interrupted (with --output: rewrite the file)")


def render(graph: Graph, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(graph.as_json(), indent=2) + "\n"
    if fmt == "dot":
        return render_dot(graph)
    return render_svg(graph)


def _write(text: str, output: str | None) -> None:
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    target = Path(output)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(target)  # a viewer reloading the file never sees half a picture


async def _main(args: argparse.Namespace) -> int:
    while True:
        if args.prometheus is not None:
            graph = await collect_prometheus(args.prometheus, 60.0 if args.window is None else args.window)
        else:
            graph = await collect(args.admin, 1.0 if args.window is None else args.window)
        if graph.unreachable and not graph.edges and not graph.nodes and args.watch is None:
            what = "Prometheus did not answer a query" if args.prometheus else "no proxy answered"
            print(f"error: {what}: {', '.join(graph.unreachable)}", file=sys.stderr)
            return 1
        _write(render(graph, args.format), args.output)
        if args.watch is None:
            return 0
        await asyncio.sleep(args.watch)


def run(args: argparse.Namespace) -> int:
    if args.output is not None and not Path(args.output).resolve().parent.is_dir():
        print(f"error: --output {args.output}: no such directory to write it in", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        try:
            return asyncio.run(_main(args))
        except OSError as exc:
            print(f"error: --output {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    return 130
