"""``lane loadtest``: prove under load that every request took the lane it should.

Checks the arguments and the config here (clear errors, exit 2), then runs locust with the lane
locustfile in a subprocess (`runner`); the exit code is locust's, which the lane plugin sets to
the verdict: non-zero on any wrong lane, an error rate above ``--max-error-rate``, a stickiness
or share violation, a failed chaos cycle, or when no request was made.
"""

from __future__ import annotations

import argparse
import re
import sys
from urllib.parse import urlsplit

from lane.core.config import LaneConfig
from lane.core.config_load import load_config_or_demo
from lane.core.errors import ConfigError
from lane.process.options import port, positive_int, positive_number, seconds

from .grpc_client import grpc_available
from .personas import DEMO_GRPC_METHOD
from .runner import RunSpec, run_locust

__all__ = ["add_arguments", "parse_timespan", "run", "spec_from_args", "web_ui_note"]

_GRPC_METHOD = re.compile(r"/[\w.]+/\w+")
_TIMESPAN = re.compile(r"(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?")


def parse_timespan(text: str) -> int:
    """``90``, ``90s``, ``1m30s``, ``2h`` → seconds (locust's --run-time grammar)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    m = _TIMESPAN.fullmatch(text)
    if not text or m is None or not any(m.groups()):
        raise argparse.ArgumentTypeError(f"expected a time span such as 30, 30s, 2m or 1h10m, got {text!r}")
    return int(m["h"] or 0) * 3600 + int(m["m"] or 0) * 60 + int(m["s"] or 0)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="lane config YAML (default: the embedded demo config)")
    parser.add_argument("--host", help="base URL of the lane gateway, e.g. http://127.0.0.1:8080")
    parser.add_argument("--users", "-u", type=positive_int, default=5, help="concurrent users (default 5)")
    parser.add_argument("--spawn-rate", "-r", type=positive_number, default=None, help="users started per second (default: all at once)")
    parser.add_argument("--run-time", "-t", type=parse_timespan, default=30, help="stop after this long (default 30s)")
    parser.add_argument("--headless", action="store_true", help="no web UI: run, print the lane matrix, exit with the verdict")
    parser.add_argument("--lane-json", dest="json_path", metavar="PATH",
                        help="write the lane summary (verdict, matrix, checks) as JSON here")
    # locust has its own --json (its stats on stdout): `lane loadtest --json` meant one or the other.
    parser.add_argument("--json", dest="locust_json", nargs="?", const="", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--html", dest="html_path", help="write locust's HTML report, with the lane matrix, here")
    parser.add_argument("--admin", action="append", default=[],
                        help="admin base URL to poll for GET /lane/instances (repeatable; the demo admin gives a union view)")
    parser.add_argument("--chaos", nargs="?", const="auto", default=None, metavar="SERVICE@LANE",
                        help="local demo only: stop and restart a lane instance mid-run (default target: auto)")
    parser.add_argument("--chaos-after", type=seconds, help="seconds before the chaos stop (default: 20%% of the run)")
    parser.add_argument("--chaos-down", type=seconds, help="seconds the instance stays down (default: 20%% of the run)")
    parser.add_argument("--max-error-rate", type=_rate, default=0.01, help="tolerated HTTP failure ratio (default 0.01)")
    parser.add_argument("--pace", type=seconds, default=0.02, help="seconds each user waits between requests (default 0.02)")
    parser.add_argument("--grace", type=seconds, help="seconds around a request in which an unhealthy sighting justifies a fallback")
    parser.add_argument("--no-forged", action="store_true", help="do not send requests that forge the lane tag or baggage")
    parser.add_argument("--grpc", nargs="?", const=DEMO_GRPC_METHOD, default=None, metavar="METHOD",
                        help="also send every persona gRPC can carry as a unary gRPC call to METHOD on --host "
                             f"(h2c; default {DEMO_GRPC_METHOD}, lane demo's); its lane from the response "
                             "metadata x-lane-path. Needs grpcio")
    dist = parser.add_argument_group("distributed (passed through to locust)")
    role = dist.add_mutually_exclusive_group()
    role.add_argument("--master", action="store_true", help="run as locust master")
    role.add_argument("--worker", action="store_true", help="run as locust worker")
    dist.add_argument("--expect-workers", type=positive_int, default=1, help="master: workers to wait for")
    dist.add_argument("--master-host", default="127.0.0.1", help="worker: master address (default 127.0.0.1)")
    dist.add_argument("--master-port", type=port, default=5557, help="worker: master port (default 5557)")
    dist.add_argument("--master-bind-host", default="127.0.0.1", help="master: bind address (default 127.0.0.1)")
    dist.add_argument("--master-bind-port", type=port, default=5557, help="master: bind port (default 5557)")
    ui = parser.add_argument_group("web UI")
    ui.add_argument("--web-host", default="127.0.0.1", help="web UI address (default 127.0.0.1)")
    ui.add_argument("--web-port", type=port, default=8089, help="web UI port (default 8089)")
    parser.add_argument("locust_args", nargs=argparse.REMAINDER,
                        help="after --: extra arguments passed to locust unchanged")


def _load(path: str | None) -> LaneConfig:
    return load_config_or_demo(path)


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    """Validate *args* into a `RunSpec`; raises ValueError with a message for the user."""
    if getattr(args, "locust_json", None) is not None:
        raise ValueError("--json is ambiguous: lane's summary file is --lane-json PATH; "
                         "locust's own --json (stats on stdout) goes after --")
    config = _load(args.config)
    if not args.worker:
        if not args.host:
            raise ValueError("--host is required (the lane gateway's base URL)")
        url = urlsplit(args.host)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ValueError(f"--host must be an http(s) URL such as http://127.0.0.1:8080, got {args.host!r}")
    for admin in args.admin:
        url = urlsplit(admin)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ValueError(f"--admin must be an http(s) base URL, got {admin!r}")
    if args.chaos and not args.admin:
        raise ValueError("--chaos needs the local demo's admin URL: pass --admin http://127.0.0.1:PORT")
    if args.chaos and args.chaos != "auto":
        from .chaos import parse_target

        parse_target(args.chaos, config)
    if args.grpc is not None:
        if not _GRPC_METHOD.fullmatch(args.grpc):
            raise ValueError(f"--grpc takes a full method name such as {DEMO_GRPC_METHOD}, got {args.grpc!r}")
        if args.host and urlsplit(args.host).scheme != "http":
            raise ValueError(f"--grpc calls in plaintext h2c (no TLS): --host must be an http:// URL, got {args.host!r}")
        if not grpc_available():
            raise ValueError("--grpc needs the Python package 'grpc', which is not installed: pip install 'lane[grpc]'")
    extra = [a for a in args.locust_args if a != "--"] if args.locust_args else []
    return RunSpec(
        host=args.host, config=args.config, users=args.users,
        spawn_rate=args.spawn_rate if args.spawn_rate is not None else float(args.users),
        run_time=args.run_time, headless=args.headless, json_path=args.json_path, html_path=args.html_path,
        admins=tuple(args.admin), max_error_rate=args.max_error_rate, pace=args.pace, grace=args.grace,
        chaos=args.chaos, chaos_after=args.chaos_after, chaos_down=args.chaos_down, forged=not args.no_forged,
        grpc_method=args.grpc,
        master=args.master, worker=args.worker, expect_workers=args.expect_workers,
        master_host=args.master_host, master_port=args.master_port, master_bind_host=args.master_bind_host,
        master_bind_port=args.master_bind_port, web_host=args.web_host, web_port=args.web_port, extra=tuple(extra),
    )


def run(args: argparse.Namespace) -> int:
    try:
        spec = spec_from_args(args)
    except (ConfigError, ValueError) as exc:
        print(f"lane loadtest: error: {exc}", file=sys.stderr)
        return 2
    if (note := web_ui_note(spec)) is not None:
        print(note, file=sys.stderr)
    return run_locust(spec)


def web_ui_note(spec: RunSpec) -> str | None:
    """Locust's --run-time counts only with --headless or --autostart; in the web UI it pre-fills the Start
    form's "Run time" field instead. Say so, once, rather than let a run seem to ignore it."""
    if spec.headless or spec.worker or "--autostart" in spec.extra:
        return None
    return (f"lane loadtest: web UI on http://{spec.web_host}:{spec.web_port} — --run-time {spec.run_time}s counts "
            "from when you press Start (it fills the form's Run time); to start now and end with the verdict, "
            "add: -- --autostart --autoquit 5")
