"""Where a cluster command works: the lane config, the namespace, and the API connection.

`lane mesh apply` and `lane mesh sync` start alike: load the lane config (``--config`` is required:
they change a cluster, and the embedded demo's objects applied to ``default`` by a forgotten flag
are no default anyone wants), take ``--namespace`` or the config's ``mesh.namespace``, connect with the
connection options. `run_on_cluster` does that once for both, so they also fail alike: exit 2 when
the config cannot be loaded or rendered (nothing was tried against the cluster; `lane check`
accepts some configs the renderer refuses, e.g. a regex over the gateway Lua's limits, so the
config is rendered once before connecting), 1 when the cluster cannot be reached or refuses a
request, each with a one-line ``error:`` on stderr. A `ConfigError` raised later (a renderer that
refuses the lanes seen in the cluster) is also exit 2: retrying cannot fix it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from lane.core.config import LaneConfig
from lane.core.config_load import load_config
from lane.core.errors import ConfigError
from lane.process.options import dns_label

from .kube import Kube, KubeError, connect

__all__ = ["Target", "add_target_arguments", "kube_from_args", "load_lane_config", "run_on_cluster"]


@dataclass(frozen=True, slots=True)
class Target:
    config: LaneConfig
    namespace: str
    kube: Kube


def load_lane_config(path: str | None, command: str = "this command") -> LaneConfig:
    """The lane config at *path*; none given is a `ConfigError` (no embedded demo in a cluster)."""
    if not path:
        raise ConfigError(command, "", "needs --config FILE, the lane config whose objects it applies: it "
                          "changes a cluster, so the embedded demo config is never its default")
    return load_config(path)


def kube_from_args(args: argparse.Namespace) -> Kube:
    return Kube(connect(args.kubeconfig, args.context, args.server), timeout=args.request_timeout)


def add_target_arguments(parser: argparse.ArgumentParser, namespace_help: str) -> None:
    """``--config``, ``--namespace`` (described by *namespace_help*) and the connection options."""
    parser.add_argument("--config", "-c", help="lane config YAML (required)")
    parser.add_argument("--namespace", "-n", type=dns_label, help=namespace_help)


def run_on_cluster(args: argparse.Namespace, command: Callable[[Target], int]) -> int:
    """Load, connect, then run *command*; returns its exit code, or 2 / 1 as the module says."""
    from .render import render_objects  # the renderer is only needed once a config is in hand

    try:
        config = load_lane_config(args.config, f"lane mesh {getattr(args, 'mesh_command', '')}".strip())
        namespace = args.namespace or config.mesh.namespace
        render_objects(config, namespace=namespace)  # every lane: refuse what the renderer refuses, now
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return command(Target(config, namespace, kube_from_args(args)))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KubeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
