"""``lane rollout``: open a lane to more and more users, judged at every step, rolled back when it misbehaves.

Exit status: 0 promoted (the last step passed), 1 rolled back (share 0; the reason on stderr and in
the record), 2 bad input or an admin listener (with ``--mesh``: the Kubernetes API server) that does
not answer (one line, nothing changed that was not put back), 130 stopped by Ctrl-C/SIGTERM between
two changes. See `rollout.runner` for the order of things, `rollout.analysis` for the checks and
`rollout.mesh_target` for ``--mesh``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import urllib.request
from pathlib import Path

from lane.process.admin_access import TOKEN_ENV, token_file
from lane.process.options import dns_label, positive_int, text_file
from mesh_config.connection import add_connection_arguments

from .admin_client import admin_url
from .analysis import Thresholds
from .errors import RolloutInputError
from .plan import parse_steps
from .runner import Cluster, Options, rollout

__all__ = ["add_arguments", "duration", "run"]


def duration(text: str) -> float:
    """``30s``, ``500ms``, ``2m`` or plain seconds, as seconds (more than 0, at most a day)."""
    value = text.strip().lower()
    scale = 1.0
    for suffix, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if value.endswith(suffix):
            value, scale = value[: -len(suffix)], factor
            break
    try:
        seconds = float(value) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration like 30s, 500ms or 2m, got {text!r}") from None
    if not 0 < seconds <= 86400:
        raise argparse.ArgumentTypeError(f"expected a duration above 0 and at most 24h, got {text!r}")
    return seconds


def _fraction(text: str) -> float:
    try:
        value = float(text.strip().removesuffix("%")) / (100 if text.strip().endswith("%") else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction like 0.01 or 1%, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1 (or 0% to 100%), got {text!r}")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"expected a ratio of at least 1 (e.g. 2 or 1.5), got {text!r}")
    return value


def _url(text: str) -> str:
    url = admin_url(text)
    if not url.startswith(("http://", "https://")) or url.endswith("://"):
        raise argparse.ArgumentTypeError(f"expected http://HOST:PORT or HOST:PORT, got {text!r}")
    return url


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        type=text_file,
        help="the lane config the gateways run: the lane's share is set in it (in place) and reloaded "
        "(required unless --demo)",
    )
    parser.add_argument(
        "--demo",
        type=_url,
        metavar="URL",
        help="the admin URL of a running `lane demo`: --config, every --admin and --host are read "
        "from its /demo/topology",
    )
    parser.add_argument(
        "--lane", required=True, help="the lane to roll out (its percentage coloring rule is set)"
    )
    parser.add_argument("--rule", help="the percentage rule to set, when several color the lane")
    parser.add_argument(
        "--steps",
        type=parse_steps,
        default=parse_steps("1,5,25,50,100"),
        help="shares in percent, increasing (default 1,5,25,50,100)",
    )
    parser.add_argument(
        "--interval",
        type=duration,
        default=30.0,
        help="how long each step is watched before it is judged (default 30s)",
    )
    parser.add_argument(
        "--admin",
        type=_url,
        action="append",
        default=[],
        metavar="URL",
        help="an admin listener of a gateway (the share is set there) or a sidecar (its metrics "
        "are judged: the whole chain); repeat for each proxy",
    )
    parser.add_argument(
        "--admin-token-file",
        type=token_file,
        default=None,
        dest="admin_token",
        metavar="PATH",
        help=f"the admin token for POST /lane/reload from another host (default ${TOKEN_ENV})",
    )
    parser.add_argument(
        "--max-error-rate",
        type=_fraction,
        default=0.01,
        help="the lane's error rate (5xx) above which a check fails, when above the default "
        "lane's too (default 0.01 = 1%%)",
    )
    parser.add_argument(
        "--max-p99-ratio",
        type=_ratio,
        default=2.0,
        help="the lane's p99 over the default lane's above which a check fails (default 2)",
    )
    parser.add_argument(
        "--min-p99",
        type=duration,
        default=0.025,
        help="a p99 at or under this is never a failure, whatever the ratio (default 25ms)",
    )
    parser.add_argument(
        "--min-requests",
        type=positive_int,
        default=20,
        help="lane requests at the entry a step needs before it is judged (default 20)",
    )
    parser.add_argument(
        "--threshold",
        type=positive_int,
        default=1,
        help="failed checks before the rollback, counted over the rollout (default 1)",
    )
    parser.add_argument(
        "--max-waits",
        type=positive_int,
        default=10,
        help="intervals in a row a step may wait for --min-requests before the rollout rolls "
        "back (default 10)",
    )
    parser.add_argument(
        "--load",
        action="store_true",
        help="send synthetic users (the load test's personas) through --host while judging",
    )
    parser.add_argument("--host", type=_url, help="the gateway's URL, for --load")
    parser.add_argument(
        "--load-rate", type=positive_int, default=50, help="--load requests per second (default 50)"
    )
    parser.add_argument(
        "--load-users",
        type=positive_int,
        default=1000,
        help="distinct --load user ids, spread over the sticky share (default 1000)",
    )
    parser.add_argument(
        "--webhook",
        type=_url,
        help="POSTed before each step; not 2xx counts as a failed check (asked again next interval)",
    )
    parser.add_argument(
        "--prometheus",
        type=_url,
        metavar="URL",
        help="read the figures from this Prometheus server's query API (it scrapes every proxy) "
        "instead of each --admin's /metrics; then --admin need only name the gateways. With --mesh "
        "(required): the server that scrapes Istio's proxies",
    )
    parser.add_argument(
        "--record", default=None, help="the JSON record (default rollout-LANE.json); a rerun continues it"
    )
    parser.add_argument("--svg", default=None, help="the SVG timeline (default: the record's name with .svg)")
    mesh = parser.add_argument_group("Istio mesh (--mesh)")
    mesh.add_argument(
        "--mesh",
        action="store_true",
        help="set the share in an Istio mesh instead of on lane's gateways: re-render --config and apply the "
        "ingress gateway's coloring EnvoyFilter as `lane mesh apply` does; judged from Istio's metrics "
        "in --prometheus, which --mesh requires",
    )
    mesh.add_argument(
        "--namespace",
        "-n",
        type=dns_label,
        help="with --mesh: the namespace the config was applied to (default: its mesh.namespace)",
    )
    add_connection_arguments(parser)


def _from_demo(args: argparse.Namespace) -> None:
    """Fill --config, --admin and --host from a running demo's ``GET /demo/topology``."""
    try:
        with urllib.request.urlopen(f"{args.demo}/demo/topology", timeout=10) as resp:
            topology = json.loads(resp.read())
        instances = topology["instances"]
        sidecars = [
            f"http://{row['admin']}"
            for lanes in instances.values()
            for rows in lanes.values()
            for row in rows
        ]
        config, gateway_admin, gateway = (
            str(topology["config"]),
            str(topology["gateway_admin"]),
            str(topology["gateway"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RolloutInputError(f"--demo {args.demo}: cannot read its /demo/topology: {exc}") from None
    args.config = args.config or config
    args.admin = args.admin or [gateway_admin, *sidecars]
    args.host = args.host or gateway


def _mesh_options(args: argparse.Namespace) -> Cluster | None:
    """``--mesh``'s cluster, or None; refuses the options that belong to the other mode."""
    connection = ("namespace", "kubeconfig", "context", "server")
    if not args.mesh:
        given = [f"--{name}" for name in connection if getattr(args, name)]
        if given:
            raise RolloutInputError(f"{', '.join(given)}: only with --mesh (the share set in an Istio mesh)")
        return None
    if args.demo or args.admin:
        raise RolloutInputError(
            "--mesh sets the share in the cluster's EnvoyFilter: --admin and --demo are for lane's own gateways"
        )
    if not args.prometheus:
        raise RolloutInputError(
            "--mesh needs --prometheus URL: the Prometheus server that scrapes Istio's proxies (istio_requests_total)"
        )
    if not args.config:
        raise RolloutInputError("--mesh needs --config FILE: the lane config applied to the cluster")
    return Cluster(args.namespace, args.kubeconfig, args.context, args.server, args.request_timeout)


def options(args: argparse.Namespace) -> Options:
    cluster = _mesh_options(args)
    if args.demo:
        _from_demo(args)
    if not args.config:
        raise RolloutInputError("--config FILE is required (or --demo URL, a running lane demo's admin)")
    if not args.admin and cluster is None:
        raise RolloutInputError(
            "at least one --admin URL is required: the gateways' admins (and the sidecars')"
        )
    if args.load and not args.host:
        raise RolloutInputError("--load needs --host URL (the gateway to send the users through)")
    record = Path(args.record or f"rollout-{args.lane}.json")
    for path in (record, Path(args.svg) if args.svg else None):
        if path is not None and not path.resolve().parent.is_dir():
            raise RolloutInputError(f"{path}: no such directory to write it in")
    token: bytes | None = args.admin_token
    if token is None and os.environ.get(TOKEN_ENV, "").strip():
        token = os.environ[TOKEN_ENV].strip().encode("utf-8", "surrogateescape")
    limits = Thresholds(args.max_error_rate, args.max_p99_ratio, args.min_p99, args.min_requests)
    return Options(
        config=Path(args.config),
        lane=args.lane,
        rule=args.rule,
        steps=args.steps,
        interval=args.interval,
        admins=tuple(dict.fromkeys(args.admin)),
        token=token,
        limits=limits,
        threshold=args.threshold,
        max_waits=args.max_waits,
        host=args.host,
        load=args.load,
        load_rate=float(args.load_rate),
        load_users=args.load_users,
        webhook=args.webhook,
        prometheus=args.prometheus,
        mesh=cluster,
        record=record,
        svg=Path(args.svg) if args.svg else record.with_suffix(".svg"),
    )


def run(args: argparse.Namespace) -> int:
    """Raises `RolloutInputError` (a `LaneError`: `lane.cli.main` prints it as one line, exit 2)."""
    return asyncio.run(rollout(options(args)))
