"""``lane check``: parse a config and say what it means, so a human can review a change before it ships."""

from __future__ import annotations

import argparse
import sys

from lane.core.config import LaneConfig
from lane.core.config_load import load_config_or_demo
from lane.core.errors import ConfigError

__all__ = ["add_arguments", "config_path", "describe", "run", "warnings"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", metavar="FILE", help="lane config YAML (default: the embedded demo config)")
    parser.add_argument("--config", "-c", help="the same as FILE, as the other commands spell it")


def config_path(args: argparse.Namespace) -> str | None:
    """FILE or --config; both naming different files is a mistake worth a word, not a silent pick."""
    file: str | None = getattr(args, "file", None)
    option: str | None = args.config
    if file and option and file != option:
        raise ConfigError("lane check", "", f"FILE {file!r} and --config {option!r} name different configs; give one")
    return file or option


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
        speaks = ", grpc" if svc.grpc else ""
        lines.append(f"  {svc.name} ({svc.host}:{svc.port}{speaks}): {lanes}")
    return "\n".join(lines)


def warnings(config: LaneConfig) -> list[str]:
    """What the config means that its author may not: valid, but probably not what was meant.

    - a strict lane never falls back (it answers 503 where it has no instance), so a fallback
      declared for it is ignored (one to the default lane cannot be told from the implicit one);
    - a service with instances but none in the default lane answers 503 to all untagged traffic,
      and to every lane whose chain reaches the default lane there;
    - a service that lists no instances (a Kubernetes ``selector`` only) has lanes only from the
      cluster: a ``lane mesh render`` without ``--from-cluster`` gives it no subset, so every route
      to it answers 503 until ``--from-cluster`` or ``lane mesh sync`` fills them in.
    """
    out = []
    for lane in config.lanes.values():
        if lane.strict and lane.fallback not in (None, config.default_lane):
            out.append(f"lanes.{lane.name}: strict, so its fallback {lane.fallback!r} is ignored "
                       "(it answers 503 where it has no instance)")
    for svc in config.services.values():
        if svc.instances and not svc.has_lane(config.default_lane):
            out.append(f"services.{svc.name}: no {config.default_lane} instance: untagged requests to it "
                       f"(and every lane falling back to {config.default_lane}) answer 503")
        if not svc.instances:
            out.append(f"services.{svc.name}: declares no lanes (selector only): `lane mesh render` without "
                       "--from-cluster routes every request to it to 503; use --from-cluster or `lane mesh sync`")
    return out


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config_or_demo(config_path(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(describe(config))
    for warning in warnings(config):
        print(f"warning: {config.source}: {warning}", file=sys.stderr)
    return 0
