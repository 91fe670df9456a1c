"""Traffic personas: requests derived from the config's coloring rules, each with its expected lane.

For every rule we synthesise a request that matches it and near misses that must not (a value in
the wrong case, a prefix shortened by one character, a regex value that does not fully match, a
cookie or parameter with a similar name, an ``absent`` header sent anyway). Add a request that
matches nothing and outside clients forging the tag header or baggage, which must not be trusted.

The expected lane is never written down by hand: it comes from `lane.core.rules` (the reference
engine) on exactly the request the user sends. Sticky percentages use a fixed pool of keys whose
buckets `lane.core.hashing` decides, so every request's lane is exact; a keyless percentage is a random
draw, so its persona carries a distribution that only the share check can judge.

Pure: no locust, no I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlencode

from lane.core.config import LaneConfig
from lane.core.hashing import in_percentage
from lane.core.rules import Condition, RequestView, Rule, Source, color

from .regex_examples import example_of, is_safe_value, near_miss_of

__all__ = ["DEMO_GRPC_METHOD", "USER_AGENT", "Persona", "PersonaKind", "build_personas", "grpc_twins", "outcomes"]

PersonaKind = Literal["match", "near-miss", "no-match", "forged", "sticky", "share"]

log = logging.getLogger(__name__)

USER_AGENT: Final = "lane-loadtest/0.1"
# Headers every request carries; the persona's own headers replace them by name.
_BASE_HEADERS: Final = (("user-agent", USER_AGENT), ("accept", "*/*"), ("accept-encoding", "identity"))
_KEYS_PER_SIDE: Final = 2  # sticky keys inside and outside each keyed share
_KEY_POOL: Final = 1000
DEMO_GRPC_METHOD: Final = "/lane.demo.Demo/Call"  # `lane demo`'s unary method (lane.demo.grpc_app.CALL_METHOD)
# Headers an HTTP persona sends that a gRPC call does not: HTTP/2 and gRPC own them (or grpcio sets them).
_NOT_METADATA: Final = frozenset({"accept", "accept-encoding", "user-agent", "host", "te", "content-type",
                                  "connection", "transfer-encoding", "content-length"})

# (source, name) -> value; None means "do not send it"
_Draft = dict[tuple[Source, str], str | None]


@dataclass(frozen=True, slots=True)
class Persona:
    """One kind of request and what must happen to it."""

    name: str
    kind: PersonaKind
    headers: tuple[tuple[str, str], ...]  # every header sent, Cookie included
    query: str  # the query string, without "?"
    outcomes: tuple[tuple[str, float], ...]  # lane -> probability, most likely first
    rule: str | None = None  # the rule it was derived from
    sticky_key: str | None = None  # requests with the same key must always get the same lane
    grpc_method: str | None = None  # sent as a unary gRPC call to this method (None: an HTTP GET)

    @property
    def user_agent(self) -> str:
        return next((v for k, v in self.headers if k == "user-agent"), USER_AGENT)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """A gRPC persona's metadata: its headers but the user agent (a channel option) and HTTP's own."""
        return tuple((k, v) for k, v in self.headers if k not in _NOT_METADATA)

    @property
    def lane(self) -> str | None:
        """The lane every request of this persona must be colored, or None for a random share."""
        return self.outcomes[0][0] if len(self.outcomes) == 1 else None

    @property
    def possible_lanes(self) -> tuple[str, ...]:
        return tuple(lane for lane, p in self.outcomes if p > 0)

    @property
    def path(self) -> str:
        return "/?" + self.query if self.query else "/"

    def view(self) -> RequestView:
        return RequestView.from_parts(self.headers, self.query)


def outcomes(rules: Iterable[Rule], view: RequestView, default_lane: str) -> tuple[tuple[str, float], ...]:
    """The lanes *view* may be colored and their probabilities, walking the rules like `color`.

    Deterministic rules either match or not; a keyless percentage whose conditions hold matches
    with its probability and otherwise lets the walk continue.
    """
    mass = 1.0
    dist: dict[str, float] = {}
    for rule in rules:
        if not all(c.holds(view) for c in rule.conditions):
            continue
        pct = rule.percentage
        if pct is not None and pct.key is None and 0 < pct.percent < 100:
            p = pct.percent / 100
            dist[rule.lane] = dist.get(rule.lane, 0.0) + mass * p
            mass *= 1 - p
            continue
        if rule.matches(view):
            dist[rule.lane] = dist.get(rule.lane, 0.0) + mass
            mass = 0.0
            break
    if mass > 0:
        dist[default_lane] = dist.get(default_lane, 0.0) + mass
    return tuple(sorted(dist.items(), key=lambda item: (-item[1], item[0])))


def _similar_name(source: Source, name: str) -> str:
    """A name one typo away: cookies and parameters are case-sensitive, header names are not."""
    if source is not Source.HEADER and name.swapcase() != name:
        return name.swapcase()
    return name[:-1] if source is Source.HEADER and len(name) > 1 else name + "_"


def _matching_value(cond: Condition) -> str | None:
    m = cond.match
    if m.kind == "exact":
        return m.value
    if m.kind == "prefix":
        return (m.value or "") + "1"
    if m.kind == "regex":
        assert m.pattern is not None
        return example_of(m.pattern)
    return "1"  # present (absent is handled by the caller)


def _satisfying(rule: Rule) -> _Draft | None:
    draft: _Draft = {}
    for cond in rule.conditions:
        key = (cond.source, cond.name)
        if cond.match.kind == "absent":
            draft[key] = None
            continue
        value = _matching_value(cond)
        if value is None:
            return None
        draft[key] = value
    return draft


def _near_misses(rule: Rule, draft: _Draft) -> list[tuple[str, _Draft]]:
    out: list[tuple[str, _Draft]] = []
    for cond in rule.conditions:
        key = (cond.source, cond.name)
        where = f"{cond.source.value} {cond.name}"
        m = cond.match
        variants: list[tuple[str, str | None]] = []
        if m.kind == "exact" and m.value is not None:
            changed = m.value.swapcase() if m.value.swapcase() != m.value else m.value + "0"
            variants.append(("case" if changed.lower() == m.value.lower() else "value", changed))
        elif m.kind == "prefix" and m.value:
            variants.append(("prefix", m.value[:-1]))
        elif m.kind == "regex" and m.pattern is not None:
            miss = near_miss_of(m.pattern, draft.get(key))
            if miss is not None:
                variants.append(("regex", miss))
        elif m.kind == "absent":
            variants.append(("present", "1"))
        for label, value in variants:
            out.append((f"~{label} {where}", {**draft, key: value}))
        if m.kind != "absent":  # the right value under a name one typo off, for every source
            similar = {k: v for k, v in draft.items() if k != key}
            similar[(cond.source, _similar_name(cond.source, cond.name))] = draft.get(key)
            out.append((f"~name {where}", similar))
    return out


def _may_match(rule: Rule, view: RequestView) -> bool:
    """Whether *rule* can match *view* at all (a keyless percentage counts as "can")."""
    if not all(c.holds(view) for c in rule.conditions):
        return False
    pct = rule.percentage
    return pct is None or pct.key is None or rule.matches(view)


def _request(draft: _Draft) -> tuple[tuple[tuple[str, str], ...], str]:
    headers = {name: value for name, value in _BASE_HEADERS}
    cookies: list[str] = []
    query: list[tuple[str, str]] = []
    for (source, name), value in draft.items():
        if source is Source.HEADER:
            if value is None:
                headers.pop(name, None)
            else:
                headers[name] = value
        elif value is not None and source is Source.COOKIE:
            cookies.append(f"{name}={value}")
        elif value is not None:
            query.append((name, value))
    if cookies:
        headers["cookie"] = "; ".join(cookies)
    return tuple(headers.items()), urlencode(query)


def _sendable(draft: _Draft) -> bool:
    return all(value is None or value == "" or is_safe_value(value) for value in draft.values())


def _keys(rule: Rule) -> list[tuple[str, bool]]:
    """Pool keys inside and outside the rule's sticky share, found with `lane.core.hashing`."""
    assert rule.percentage is not None
    inside: list[tuple[str, bool]] = []
    outside: list[tuple[str, bool]] = []
    for i in range(_KEY_POOL):
        key = f"lane-key-{i}"
        side = inside if in_percentage(key, rule.percentage.percent, rule.percentage.salt) else outside
        if len(side) < _KEYS_PER_SIDE:
            side.append((key, side is inside))
        if len(inside) == len(outside) == _KEYS_PER_SIDE:
            break
    return inside + outside


def build_personas(config: LaneConfig, *, forged: bool = True) -> tuple[Persona, ...]:
    """Every persona the config's rules imply, in a stable order, with unique names."""
    drafts: list[tuple[str, PersonaKind, str | None, _Draft, str | None]] = []
    for rule in config.rules:
        draft = _satisfying(rule)
        if draft is None:  # a regex we cannot synthesise a value for: say so rather than guess
            log.warning("rule %s: cannot build a request matching it; it gets no personas", rule.name)
            continue
        pct = rule.percentage
        if pct is not None and pct.key is not None:
            hkey = (pct.key.source, pct.key.name)
            for key, inside in _keys(rule):
                label = "in share" if inside else "outside share"
                drafts.append((f"{rule.name} key={key} ({label})", "sticky", rule.name, {**draft, hkey: key}, key))
            drafts.append((f"{rule.name} ~no key", "near-miss", rule.name, {**draft, hkey: None}, None))
            matched = {**draft, hkey: _keys(rule)[0][0]}
        else:
            kind: PersonaKind = "share" if pct is not None and 0 < pct.percent < 100 else "match"
            drafts.append((rule.name, kind, rule.name, draft, None))
            matched = draft
        for label, miss in _near_misses(rule, matched):
            drafts.append((f"{rule.name} {label}", "near-miss", rule.name, miss, None))
    drafts.append(("no-match", "no-match", None, {}, None))
    if forged:
        for lane in config.lanes:
            if lane == config.default_lane:
                continue
            drafts.append((f"forged {config.tag.header}={lane}", "forged", None,
                           {(Source.HEADER, config.tag.header): lane}, None))
            drafts.append((f"forged baggage {config.tag.baggage_key}={lane}", "forged", None,
                           {(Source.HEADER, "baggage"): f"{config.tag.baggage_key}={lane}"}, None))
    personas: list[Persona] = []
    seen: set[str] = set()
    for name, kind, rule_name, draft, sticky in drafts:
        if not _sendable(draft):
            continue
        headers, query = _request(draft)
        view = RequestView.from_parts(headers, query)
        if kind == "near-miss" and any(r.name == rule_name and _may_match(r, view) for r in config.rules):
            continue  # the perturbation still matches (e.g. a case-insensitive regex): not a near miss
        dist = outcomes(config.rules, view, config.default_lane)
        if len(dist) == 1:  # the reference engine has the last word on deterministic requests
            dist = ((color(config.rules, view, config.default_lane).lane, 1.0),)
        unique, n = name, 2
        while unique in seen:
            unique, n = f"{name} #{n}", n + 1
        seen.add(unique)
        personas.append(Persona(unique, kind, headers, query, dist, rule_name, sticky))
    return tuple(personas)


def grpc_twins(config: LaneConfig, personas: Iterable[Persona], method: str, agent_suffix: str) -> tuple[Persona, ...]:
    """The gRPC twin of every persona a gRPC call can carry, its lane judged on what the gateway sees.

    A gRPC call has no query string and no user agent of its own alone: grpcio appends its own after
    the one the client names (*agent_suffix*, e.g. ``grpc-python/1.85.3 grpc-c/...``), so the expected
    lane is recomputed by the reference engine on that user agent, never copied from the HTTP persona
    (the demo's ``xiaoming`` is gray over HTTP by its exact rule, gray over gRPC by ``xiaoming-grpc``).
    """
    twins: list[Persona] = []
    for p in personas:
        if p.query or p.grpc_method is not None or any(k.startswith(("grpc-", ":")) for k, _ in p.headers):
            continue
        headers = (("user-agent", f"{p.user_agent} {agent_suffix}"), *p.metadata)
        view = RequestView.from_parts(headers, "")
        dist = outcomes(config.rules, view, config.default_lane)
        if len(dist) == 1:
            dist = ((color(config.rules, view, config.default_lane).lane, 1.0),)
        sticky = f"grpc {p.sticky_key}" if p.sticky_key is not None else None
        twins.append(Persona(f"grpc {p.name}", p.kind, (("user-agent", p.user_agent), *p.metadata), "", dist,
                             p.rule, sticky, method))
    return tuple(twins)
