"""Set the share of a lane's percentage rule in the config file: in place, validated, atomically.

The config file stays the source of truth (a gateway restarted mid-rollout must come back at the
share in force), and it is a file a human wrote: so the one number is replaced in the YAML text,
where `yaml.compose` says that scalar starts and ends, and every comment, key order and blank line
stays as it was. The result must load with the real loader (`lane.core.config_load.parse_config`) and differ
from the old config in that rule's percent only (a ``&anchor``ed number shared by several rules
would change them all: refused), before a temporary file in the same directory is written, synced
and renamed over the old one, so a gateway reloading at any moment reads the old file or the new,
never half of one.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from lane.core.config import LaneConfig
from lane.core.config_load import load_config, parse_config
from lane.core.errors import ConfigError

from .errors import RolloutInputError

__all__ = ["ShareRule", "find_share_rule", "with_share", "write_atomically", "write_share"]


@dataclass(frozen=True, slots=True)
class ShareRule:
    """The coloring rule whose percentage is the lane's share (its position and name in the config)."""

    index: int
    name: str
    lane: str
    percent: int
    sticky: bool


def find_share_rule(config: LaneConfig, lane: str, rule: str | None = None) -> ShareRule:
    """The lane's one percentage rule (or the one named *rule*); `RolloutInputError` unless exactly one."""
    if lane not in config.lanes or lane == config.default_lane:
        others = ", ".join(sorted(set(config.lanes) - {config.default_lane})) or "none"
        raise RolloutInputError(
            f"--lane {lane}: not a lane {config.source} can roll out (its lanes: {others})"
        )
    found = [
        (i, r)
        for i, r in enumerate(config.rules)
        if r.lane == lane and r.percentage is not None and (rule is None or r.name == rule)
    ]
    if not found:
        which = f"named {rule!r} " if rule else ""
        raise RolloutInputError(
            f"{config.source}: no coloring rule {which}with a `percentage` colors lane {lane}; add one "
            "(e.g. `- {lane: "
            + lane
            + ", percentage: {percent: 0, key: {header: x-user-id}}}`) for the rollout to set"
        )
    if len(found) > 1:
        names = ", ".join(r.name for _, r in found)
        raise RolloutInputError(
            f"{config.source}: several percentage rules color lane {lane} ({names}); "
            "name the one to roll out with --rule"
        )
    index, chosen = found[0]
    assert chosen.percentage is not None
    return ShareRule(index, chosen.name, lane, chosen.percentage.percent, chosen.percentage.key is not None)


def _value(mapping: yaml.Node, key: str) -> yaml.Node | None:
    if not isinstance(mapping, yaml.MappingNode):
        return None
    for k, v in mapping.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return v
    return None


def _percent_span(text: str, index: int) -> tuple[int, int]:
    """Where the text of ``coloring[index].percentage.percent`` starts and ends."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    rules = _value(root, "coloring") if root is not None else None
    if not isinstance(rules, yaml.SequenceNode) or index >= len(rules.value):
        raise RolloutInputError(f"coloring[{index}] is not in the file any more")
    node = _value(_value(rules.value[index], "percentage") or yaml.ScalarNode("", ""), "percent")
    if not isinstance(node, yaml.ScalarNode):
        raise RolloutInputError(f"coloring[{index}].percentage.percent is not a plain number in the file")
    if text[node.start_mark.index] in "&!":  # the node's text starts with its anchor or tag
        raise RolloutInputError(
            f"coloring[{index}].percentage.percent is shared with other rules or tagged "
            "(a YAML anchor?): write it as a number of its own"
        )
    return node.start_mark.index, node.end_mark.index


def with_share(text: str, source: str, rule: ShareRule, percent: int) -> str:
    """*text* with the rule's percent set to *percent*; every other character as it was.

    Raises `RolloutInputError` when the result would not be the same config but for that number.
    """
    if not 0 <= percent <= 100:
        raise RolloutInputError(f"a share is 0 to 100, got {percent}")
    before = parse_config(text, source)
    start, end = _percent_span(text, rule.index)
    edited = text[:start] + str(percent) + text[end:]
    try:
        after = parse_config(edited, source)
    except ConfigError as exc:
        raise RolloutInputError(f"setting {rule.name} to {percent}% would break the config: {exc}") from None
    changed = [i for i, (old, new) in enumerate(zip(before.rules, after.rules, strict=True)) if old != new]
    got = after.rules[rule.index].percentage
    if changed != ([rule.index] if rule.percent != percent else []) or got is None or got.percent != percent:
        raise RolloutInputError(
            f"{source}: coloring[{rule.index}].percentage.percent is shared with other rules "
            "(a YAML anchor?): write it as a number of its own"
        )
    return edited


def write_atomically(path: Path, text: str) -> None:
    """Replace *path* by *text* so a reader sees the old file or the new one, never a part (mode kept)."""
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


def write_share(path: Path, lane: str, rule_name: str | None, percent: int) -> ShareRule:
    """Set the lane's share in the file at *path* (re-read now: a human may have edited it meanwhile)."""
    try:
        config = load_config(path)
        text = path.read_text(encoding="utf-8")
    except ConfigError as exc:
        raise RolloutInputError(str(exc)) from None
    rule = find_share_rule(config, lane, rule_name)
    if rule.percent != percent:
        write_atomically(path, with_share(text, str(path), rule, percent))
    return ShareRule(rule.index, rule.name, lane, percent, rule.sticky)
