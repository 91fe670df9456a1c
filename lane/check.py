"""``lane check``: parse a config and say what it means, so a human can review a change before it ships."""

from __future__ import annotations

import argparse
import sys

from .config import LaneConfig, load_config_or_demo
from .errors import ConfigError

__all__ = ["add_arguments", "describe", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="lane config YAML (default: the embedded demo config)")


def describe(config: LaneConfig) -> str:
    lines = [
        (
            f"config {config.source}: tag header {config.tag.header}, baggage key {config.tag.baggage_key}, "
            f"default lane {config.default_lane}, label key {config.label_key}"
        )
    ]
    lines.append("lanes:")
    for lane in config.lanes.values():
        strict = " (strict)" if lane.strict else ""
        lines.append(f"  {lane.name}: {' -> '.join(config.chain(lane.name))}{strict}")
    lines.append("coloring rules (first match wins):")
    for i, rule in enumerate(config.rules):
        conds = [f"{c.source.value} {c.name} {c.match.kind} {c.match.value or ''}".rstrip() for c in rule.conditions]
        if rule.percentage:
            key = f" of {rule.percentage.key.source.value} {rule.percentage.key.name}" if rule.percentage.key else " (random)"
            conds.append(f"{rule.percentage.percent}%{key}")
        lines.append(f"  [{i}] {rule.name}: {' and '.join(conds)} -> {rule.lane}")
    lines.append(f"services (entry {config.entry}):")
    for svc in config.services.values():
        lanes = ", ".join(f"{lane}={len(eps)}" for lane, eps in svc.instances.items()) or "from cluster"
        lines.append(f"  {svc.name} ({svc.host}:{svc.port}): {lanes}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config_or_demo(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(describe(config))
    return 0
