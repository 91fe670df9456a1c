"""Request vectors: requests whose lane the Python engine decides and the Istio config must agree on.

A `Vector` is what a client sends: headers in order (repeats allowed) and a raw query string.
`python_lanes` is the Python engine's answer -- a set, because a percentage without a key is a
random draw: its vectors agree when Envoy picks any lane the engine could have picked.
`vectors_for` derives vectors from a config's own rules (a request meeting each rule, one
violating each condition in turn, sticky keys on both sides of each percentage -- chosen with the
sticky hash itself (`lane.core.hashing`), so every share between 1 and 99 % is proven from inside and
outside -- a client trying to choose its own lane), so `lane mesh verify` works on any config
without a hand-made table.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from lane.core.config import LaneConfig
from lane.core.errors import ConfigError
from lane.core.hashing import in_percentage
from lane.core.rules import Condition, RequestView, Rule, Source

from .regex import RegexNode, children, parse_regex

__all__ = ["Vector", "load_vectors", "python_lanes", "sample_for", "sticky_keys", "vectors_for"]


@dataclass(frozen=True, slots=True)
class Vector:
    name: str
    headers: tuple[tuple[str, str], ...] = ()
    query: str = ""
    # how the stub apps forward the lane on this vector: ``MODE`` or ``SERVICE=MODE`` items
    # (`mesh_config.calls.parse_forward`), after verify's defaults
    forward: tuple[str, ...] = ()

    @property
    def target(self) -> str:
        return "/" + (f"?{self.query}" if self.query else "")

    def parsed_headers(self) -> tuple[tuple[str, str], ...]:
        """The headers as an HTTP/1 server hands them on: names lower-cased, values without the
        optional whitespace around them (RFC 9110 §5.5) -- what both Envoy and aiohttp do."""
        return tuple((name.lower(), value.strip(" \t")) for name, value in self.headers)

    def view(self, host: str | None = None) -> RequestView:
        """The request as the Python engine sees it (with the Host header a client sends)."""
        headers = ((("host", host),) if host is not None else ()) + self.parsed_headers()
        return RequestView.from_parts(headers, self.query)


class _Draw(random.Random):
    """A "random" source that always draws *value* (0: every random share admits, 99: none but 100%)."""

    def __init__(self, value: int) -> None:
        super().__init__(0)
        self.value = value

    def randrange(self, *args: Any, **kwargs: Any) -> int:
        return self.value


def python_lanes(rules: Sequence[Rule], view: RequestView, default_lane: str) -> frozenset[str]:
    """Every lane the Python engine may give *view*: one, unless a keyless percentage is a real draw."""
    for i, rule in enumerate(rules):
        if not all(c.holds(view) for c in rule.conditions):
            continue
        pct = rule.percentage
        if pct is None or pct.key is not None or pct.percent in (0, 100):
            if rule.matches(view, _Draw(0)):
                return frozenset({rule.lane})
            continue
        rest = python_lanes(rules[i + 1:], view, default_lane)
        return frozenset({rule.lane}) | rest
    return frozenset({default_lane})


def _sample(node: RegexNode) -> str:
    """A short string the regex tree matches (printable ASCII where the pattern allows)."""
    kind = node[0]
    if kind == "set":
        spans = node[1]
        assert isinstance(spans, tuple)
        pairs = list(zip(spans[0::2], spans[1::2]))
        for lo, hi in pairs:
            if lo <= 0x7E and hi >= 0x21:
                return chr(max(lo, 0x21))
        return chr(pairs[0][0])
    if kind == "cat":
        return "".join(_sample(n) for n in children(node))
    if kind == "alt":
        return _sample(children(node)[0])
    if kind == "rep":
        count, body = node[1], node[3]
        assert isinstance(count, int) and isinstance(body, tuple)
        return _sample(body) * count
    return ""


def sample_for(condition: Condition) -> str | None:
    """A value meeting *condition* (None: the input must be absent)."""
    match = condition.match
    if match.kind == "absent":
        return None
    if match.kind == "present":
        return "1"
    if match.kind == "exact":
        return match.value or ""
    if match.kind == "prefix":
        return f"{match.value}x"
    assert match.value is not None
    return _sample(parse_regex(match.value))


def _request(inputs: Iterable[tuple[Source, str, str]]) -> tuple[tuple[tuple[str, str], ...], str]:
    headers: list[tuple[str, str]] = []
    query: list[str] = []
    for source, name, value in inputs:
        if source is Source.HEADER:
            headers.append((name, value))
        elif source is Source.COOKIE:
            headers.append(("cookie", f"{name}={value}"))
        else:
            query.append(f"{quote(name, safe='')}={quote(value, safe='')}")
    return tuple(headers), "&".join(query)


def _meeting(rule: Rule, skip: Condition | None = None) -> list[tuple[Source, str, str]]:
    out = []
    for c in rule.conditions:
        value = sample_for(c)
        if c is skip:
            value = "x" if value is None else None  # violate it: absent made present, anything else dropped
        if value is not None:
            out.append((c.source, c.name, value))
    return out


def sticky_keys(percent: int, salt: str, count: int) -> list[tuple[str, bool]]:
    """*count* keys ``user-N`` with whether each is inside the share: half inside and half outside
    when the share has both sides (all inside at 100 %, all outside at 0 %), found with the sticky
    hash; the search is bounded (a side that is not found within 100,000 keys gets fewer keys)."""
    inside_wanted = count if percent >= 100 else 0 if percent <= 0 else max(1, count // 2)
    want = {True: inside_wanted, False: count - inside_wanted}
    found: dict[bool, list[str]] = {True: [], False: []}
    for n in range(100_000):
        if all(len(found[side]) >= want[side] for side in want):
            break
        key = f"user-{n}"
        side = in_percentage(key, percent, salt)
        if len(found[side]) < want[side]:
            found[side].append(key)
    return [(key, True) for key in found[True]] + [(key, False) for key in found[False]]


def vectors_for(config: LaneConfig, keys_per_rule: int = 8) -> list[Vector]:
    """Vectors exercising every rule of *config* from both sides."""
    out = [Vector("no-lane-hints")]
    for lane in config.lanes:
        if lane != config.default_lane:
            spoof = ((config.tag.header, lane), ("baggage", f"{config.tag.baggage_key}={lane},other=1"))
            out.append(Vector(f"client-sets-{lane}", spoof))
    for i, rule in enumerate(config.rules):
        base = _meeting(rule)
        pct = rule.percentage
        if pct is not None and pct.key is not None:
            for k, (key, inside) in enumerate(sticky_keys(pct.percent, pct.salt, keys_per_rule)):
                inputs = [*base, (pct.key.source, pct.key.name, key)]
                out.append(Vector(f"rule{i}-{rule.name}-key{k}-{'in' if inside else 'out'}", *_request(inputs)))
        else:
            out.append(Vector(f"rule{i}-{rule.name}", *_request(base)))
        for j, condition in enumerate(rule.conditions):
            inputs = _meeting(rule, skip=condition)
            if pct is not None and pct.key is not None:
                inputs.append((pct.key.source, pct.key.name, "user-0"))
            out.append(Vector(f"rule{i}-{rule.name}-without{j}", *_request(inputs)))
    return out


def _vector(raw: Any, where: str) -> Vector:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        raise ConfigError(where, "", "expected a mapping with a string `name`")
    headers = raw.get("headers") or []
    if isinstance(headers, Mapping):
        headers = list(headers.items())
    pairs = []
    for item in headers:
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            raise ConfigError(where, "headers", f"expected [name, value] string pairs, got {item!r}")
        pairs.append((item[0], item[1]))
    query = raw.get("query") or ""
    if not isinstance(query, str):
        raise ConfigError(where, "query", "expected a string")
    forward = raw.get("forward") or []
    if isinstance(forward, str):
        forward = [forward]
    elif isinstance(forward, Mapping):
        forward = [f"{k}={v}" for k, v in forward.items()]
    if not (isinstance(forward, list) and all(isinstance(x, str) for x in forward)):
        raise ConfigError(where, "forward", f"expected MODE, {{service: MODE}} or a list of SERVICE=MODE, got {forward!r}")
    return Vector(raw["name"], tuple(pairs), query, tuple(forward))


def load_vectors(path: str | Path) -> list[Vector]:
    """Vectors from a YAML list of ``{name, headers: [[name, value], ...] | {name: value}, query,
    forward: MODE | {service: MODE} | [SERVICE=MODE, ...]}``."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), "", f"cannot read vectors: {exc}") from None
    if not isinstance(data, list):
        raise ConfigError(str(path), "", "expected a list of vectors")
    return [_vector(item, f"{path}[{i}]") for i, item in enumerate(data)]
