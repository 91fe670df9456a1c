"""The lane config loaded: one YAML file parsed once into the frozen model of `lane.core.config`.

Every mistake is a `ConfigError` naming the file, the path inside it
(``coloring[2].match.headers[0].regex``) and what was expected. The documented example is
``examples/demo.yaml``; the same text ships inside the package as the embedded default.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import yaml

from lane.core.baggage import TOKEN
from lane.core.config import (
    DEFAULT_TRACE_HEADERS,
    LIMITS,
    PROTOCOLS,
    Lane,
    LaneConfig,
    MeshGatewaySpec,
    MeshSpec,
    ProxySpec,
    Service,
)
from lane.core.config_yaml import explain, load_yaml
from lane.core.dns_names import gateway_host_problem, label_problem, service_host_problem, subdomain_problem
from lane.core.endpoint import Endpoint, parse_endpoint
from lane.core.errors import ConfigError
from lane.core.rules import Condition, HashKey, MatchKind, Percentage, Rule, Source, ValueMatch, compile_re2
from lane.core.tags import DEFAULT_BAGGAGE_KEY, DEFAULT_LANE, DEFAULT_TAG_HEADER, TagSpec, is_valid_lane

__all__ = ["DEMO_SOURCE", "LABEL_KEY", "MATCH_KINDS", "demo_config_text", "load_config", "load_config_or_demo", "parse_config"]

DEMO_SOURCE: Final = "<embedded demo.yaml>"  # how errors and reports name the embedded default
LABEL_KEY = re.compile(r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
# Constructs RE2 (Envoy, Istio) does not support; rejected so the mesh emitter can mirror every rule.
_NON_RE2 = re.compile(r"\(\?[=!<>]|\(\?P=|\\[1-9]|[*+?}]\+")
_MIN_LESS_REPEAT = re.compile(r"(?<!\\)\{,[0-9]*\}")


class _At:
    """A raw value and where it sits in the file, so every check can name its path."""

    def __init__(self, source: str, path: str, value: Any) -> None:
        self.source, self.path, self.value = source, path, value

    def fail(self, problem: str) -> ConfigError:
        return ConfigError(self.source, self.path or "(top level)", problem)

    def child(self, key: str | int) -> _At:
        if isinstance(key, int):
            path = f"{self.path}[{key}]"
        else:
            path = f"{self.path}.{key}" if self.path else key
        present = (isinstance(self.value, dict) and key in self.value) or (
            isinstance(self.value, list) and isinstance(key, int) and 0 <= key < len(self.value)
        )
        return _At(self.source, path, self.value[key] if present else None)

    def mapping(self, allowed: set[str], required: set[str] = frozenset()) -> _At:  # type: ignore[assignment]
        if not isinstance(self.value, dict):
            raise self.fail(f"expected a mapping, got {_kind(self.value)}")
        for key in self.value:
            if not isinstance(key, str):
                raise self.fail(f"keys must be strings, got {key!r}")
            if key not in allowed:
                raise self.child(key).fail(f"unknown key; expected one of: {', '.join(sorted(allowed))}")
        for key in sorted(required):
            if key not in self.value:
                raise self.child(key).fail("required key is missing")
        return self

    def has(self, key: str) -> bool:
        return isinstance(self.value, dict) and key in self.value

    def items(self) -> list[tuple[str, _At]]:
        if not isinstance(self.value, dict):
            raise self.fail(f"expected a mapping, got {_kind(self.value)}")
        return [(str(k), self.child(k)) for k in self.value]

    def elements(self) -> list[_At]:
        if not isinstance(self.value, list):
            raise self.fail(f"expected a list, got {_kind(self.value)}")
        return [self.child(i) for i in range(len(self.value))]

    def string(self, default: str | None = None) -> str:
        if self.value is None and default is not None:
            return default
        if not isinstance(self.value, str) or not self.value:
            raise self.fail(f"expected a non-empty string, got {_kind(self.value)}")
        return self.value

    def integer(self, default: int, lo: int, hi: int) -> int:
        if self.value is None:
            return default
        if isinstance(self.value, bool) or not isinstance(self.value, int) or not lo <= self.value <= hi:
            raise self.fail(f"expected an integer from {lo} to {hi}, got {self.value!r}")
        return self.value

    def number(self, default: float, lo: float, hi: float) -> float:
        if self.value is None:
            return default
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not lo <= self.value <= hi:
            raise self.fail(f"expected a number from {lo} to {hi}, got {self.value!r}")
        return float(self.value)

    def bounded(self, key: str, default: float) -> Any:
        """This number within `LIMITS[key]`: an integer where *default* is one, else a float."""
        lo, hi = LIMITS[key]
        if isinstance(default, int):
            return self.integer(default, int(lo), int(hi))
        return self.number(default, lo, hi)

    def boolean(self, default: bool) -> bool:
        if self.value is None:
            return default
        if not isinstance(self.value, bool):
            raise self.fail(f"expected true or false, got {self.value!r}")
        return self.value

    def lane_name(self) -> str:
        name = self.string()
        if not is_valid_lane(name):
            raise self.fail(f"lane names must be DNS labels ([a-z0-9]([-a-z0-9]{{0,61}}[a-z0-9])?), got {name!r}")
        return name

    def choice(self, choices: tuple[str, ...]) -> str:  # the first when the key is left out
        value = self.string(choices[0])
        if value not in choices:
            raise self.fail(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def string_map(self) -> Mapping[str, str]:
        if self.value is None:
            return MappingProxyType({})
        return MappingProxyType({key: node.string() for key, node in self.items()})


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__ + f" {value!r}"[:60]


def _header_name(node: _At) -> str:
    name = node.string()
    if not TOKEN.fullmatch(name):
        raise node.fail(f"expected an HTTP header name (RFC 9110 token), got {name!r}")
    return name.lower()


def _parse_tag(node: _At) -> TagSpec:
    if node.value is None:
        return TagSpec()
    node.mapping({"header", "baggage_key", "default_lane"})
    baggage_key = node.child("baggage_key").string(DEFAULT_BAGGAGE_KEY)
    if not TOKEN.fullmatch(baggage_key):
        raise node.child("baggage_key").fail(f"expected a W3C baggage key (a token), got {baggage_key!r}")
    default_lane = node.child("default_lane").lane_name() if node.has("default_lane") else DEFAULT_LANE
    header = _header_name(node.child("header")) if node.has("header") else DEFAULT_TAG_HEADER
    return TagSpec(header=header, baggage_key=baggage_key, default_lane=default_lane)


def _parse_lanes(node: _At, default_lane: str) -> Mapping[str, Lane]:
    lanes: dict[str, Lane] = {default_lane: Lane(default_lane, None)}
    raw: dict[str, tuple[_At, str | None, bool]] = {}
    if node.value is not None:
        for name, spec in node.items():
            _At(node.source, spec.path, name).lane_name()
            spec = spec if spec.value is not None else _At(spec.source, spec.path, {})
            spec.mapping({"fallback", "strict"})
            fallback = spec.child("fallback").lane_name() if spec.has("fallback") else None
            if name == default_lane:
                if fallback is not None:
                    raise spec.child("fallback").fail(f"the default lane {default_lane!r} cannot fall back")
                lanes[name] = Lane(name, None, spec.child("strict").boolean(False))
                continue
            raw[name] = (spec, fallback or default_lane, spec.child("strict").boolean(False))
    for name, (_, fallback, strict) in raw.items():
        lanes[name] = Lane(name, fallback, strict)
    for name, (spec, fallback, _) in raw.items():
        if fallback not in lanes:
            raise spec.child("fallback").fail(f"unknown lane {fallback!r}; declared lanes: {', '.join(sorted(lanes))}")
    for name, (spec, _, _) in raw.items():
        seen = [name]
        nxt = lanes[name].fallback
        while nxt is not None:
            if nxt in seen:
                cycle = " -> ".join([*seen[seen.index(nxt):], nxt])
                raise spec.child("fallback").fail(f"fallback cycle {cycle}; every chain must end at {default_lane!r}")
            seen.append(nxt)
            nxt = lanes[nxt].fallback
    return MappingProxyType(lanes)


MATCH_KINDS: Final[tuple[MatchKind, ...]] = ("exact", "prefix", "regex", "present", "absent")


def _parse_value_match(node: _At, kinds: tuple[MatchKind, ...]) -> ValueMatch:
    given = [k for k in kinds if node.has(k)]
    if len(given) != 1:
        raise node.fail(f"expected exactly one of: {', '.join(kinds)}; got {len(given)}")
    kind = given[0]
    arg = node.child(kind)
    if kind in ("present", "absent"):
        if arg.value is not True:
            raise arg.fail(f"expected `{kind}: true`")
        return ValueMatch(kind)
    if kind == "regex":
        text = arg.string()
        if _NON_RE2.search(text):
            raise arg.fail(f"regex uses a construct RE2 (Envoy/Istio) does not support: {text!r}")
        if _MIN_LESS_REPEAT.search(text):
            raise arg.fail(f"regex has a {{,n}} repeat, which Python reads as {{0,n}} and RE2 as literal text "
                           f"(write {{0,n}}, or \\{{ for a brace): {text!r}")
        try:
            pattern = re.compile(text, re.ASCII)  # \d \w \s are ASCII in RE2 (Envoy, Istio, the Lua mirror)
        except re.error as exc:
            raise arg.fail(f"invalid regex {text!r}: {exc}") from None
        try:
            engine = compile_re2(text)  # what matches: RE2, linear time (Python's re is only the parse)
        except ValueError as exc:
            raise arg.fail(f"invalid regex {text!r} for RE2: {exc}") from None
        return ValueMatch("regex", text, pattern, engine)
    if not isinstance(arg.value, str):
        raise arg.fail(f"expected a string, got {_kind(arg.value)}")
    return ValueMatch(kind, arg.value)


def _parse_conditions(node: _At, source: Source, kinds: tuple[MatchKind, ...]) -> list[Condition]:
    out = []
    for item in node.elements():
        item.mapping({"name", *kinds}, {"name"})
        name = _header_name(item.child("name")) if source is Source.HEADER else item.child("name").string()
        out.append(Condition(source, name, _parse_value_match(item, kinds)))
    return out


def _parse_hash_key(node: _At) -> HashKey:
    node.mapping({"header", "cookie", "query"})
    given = [k for k in ("header", "cookie", "query") if node.has(k)]
    if len(given) != 1:
        raise node.fail("expected exactly one of: header, cookie, query")
    source = Source(given[0])
    child = node.child(given[0])
    name = _header_name(child) if source is Source.HEADER else child.string()
    return HashKey(source, name)


def _parse_rule(node: _At, index: int, lanes: Mapping[str, Lane]) -> Rule:
    node.mapping({"name", "lane", "match", "percentage"}, {"lane"})
    lane = node.child("lane").lane_name()
    if lane not in lanes:
        raise node.child("lane").fail(f"unknown lane {lane!r}; declared lanes: {', '.join(sorted(lanes))}")
    name = node.child("name").string(f"rule-{index}")
    conditions: list[Condition] = []
    if node.has("match"):
        match = node.child("match").mapping({"headers", "cookies", "query"})
        if match.has("headers"):
            conditions += _parse_conditions(match.child("headers"), Source.HEADER, MATCH_KINDS)
        if match.has("cookies"):
            conditions += _parse_conditions(match.child("cookies"), Source.COOKIE, ("exact", "regex", "present"))
        if match.has("query"):
            conditions += _parse_conditions(match.child("query"), Source.QUERY, ("exact", "regex", "present"))
    percentage = None
    if node.has("percentage"):
        pct = node.child("percentage").mapping({"percent", "key", "salt"}, {"percent"})
        percentage = Percentage(
            percent=pct.child("percent").bounded("coloring.percentage.percent", 0),
            key=_parse_hash_key(pct.child("key")) if pct.has("key") else None,
            salt=pct.child("salt").value if isinstance(pct.child("salt").value, str) else "",
        )
        if pct.has("salt") and not isinstance(pct.child("salt").value, str):
            raise pct.child("salt").fail("expected a string")
    if not conditions and percentage is None:
        raise node.fail("a rule needs `match` conditions, a `percentage`, or both")
    return Rule(name=name, lane=lane, conditions=tuple(conditions), percentage=percentage)


def _parse_endpoint(node: _At) -> Endpoint:
    try:
        return parse_endpoint(node.string())
    except ValueError as exc:
        raise node.fail(str(exc)) from None


def _parse_service(node: _At, name: str, lanes: Mapping[str, Lane]) -> Service:
    if not is_valid_lane(name):
        raise node.fail(f"service names must be DNS labels, got {name!r}")
    node.mapping({"host", "port", "instances", "selector", "protocol"})
    instances: dict[str, tuple[Endpoint, ...]] = {}
    inst = node.child("instances")
    if inst.value is not None:
        for lane, eps in inst.items():
            if lane not in lanes:
                raise eps.fail(f"unknown lane {lane!r}; declared lanes: {', '.join(sorted(lanes))}")
            instances[lane] = tuple(_parse_endpoint(e) for e in eps.elements()) if eps.value is not None else ()
    selector = node.child("selector").string_map()
    if not instances and not selector:
        raise node.fail("a service needs `instances` (lane -> host:port list) or a Kubernetes `selector`")
    return Service(
        name=name,
        host=_named(node.child("host"), name, service_host_problem),
        port=node.child("port").bounded("services.port", 80),
        instances=MappingProxyType(instances),
        selector=selector,
        protocol=node.child("protocol").choice(PROTOCOLS),
    )


def _parse_proxy(node: _At) -> ProxySpec:
    if node.value is None:
        return ProxySpec()
    numbers = [key.removeprefix("proxy.") for key in LIMITS if key.startswith("proxy.")]
    node.mapping({"trace_headers", "trusted_cidrs", *numbers})
    cidrs = []
    if node.has("trusted_cidrs"):
        for item in node.child("trusted_cidrs").elements():
            try:
                cidrs.append(ipaddress.ip_network(item.string(), strict=False))
            except ValueError as exc:
                raise item.fail(f"expected a CIDR such as 10.0.0.0/8: {exc}") from None
    trace_headers = DEFAULT_TRACE_HEADERS
    if node.has("trace_headers"):
        trace_headers = tuple(_header_name(h) for h in node.child("trace_headers").elements())
    defaults = ProxySpec()
    return ProxySpec(
        trace_headers=trace_headers,
        trusted_cidrs=tuple(cidrs),
        **{key: node.child(key).bounded(f"proxy.{key}", getattr(defaults, key)) for key in numbers},
    )


def _named(node: _At, default: str | None, problem: Callable[[str], str | None]) -> str:
    """A string that must pass one of `lane.core.dns_names`' rules (what kubectl apply would refuse)."""
    value = node.string(default)
    why = problem(value)
    if why is not None:
        raise node.fail(why)
    return value


def _parse_mesh(node: _At) -> MeshSpec:
    if node.value is None:
        return MeshSpec()
    node.mapping({"namespace", "gateway", "baggage_to_header", "instant_fallback"})
    gateway = MeshGatewaySpec()
    if node.has("gateway"):
        gw = node.child("gateway").mapping({"name", "hosts", "port", "selector", "namespace"})
        gateway = MeshGatewaySpec(
            name=_named(gw.child("name"), "lane-gateway", subdomain_problem),
            hosts=tuple(_named(h, None, gateway_host_problem) for h in gw.child("hosts").elements())
            if gw.has("hosts") else ("*",),
            port=gw.child("port").bounded("mesh.gateway.port", 80),
            selector=gw.child("selector").string_map() if gw.has("selector") else MeshGatewaySpec().selector,
            namespace=_named(gw.child("namespace"), "istio-system", label_problem),
        )
    return MeshSpec(
        namespace=_named(node.child("namespace"), "default", label_problem),
        gateway=gateway,
        baggage_to_header=node.child("baggage_to_header").boolean(True),
        instant_fallback=node.child("instant_fallback").boolean(True),
    )


def parse_config(text: str, source: str = "<string>") -> LaneConfig:
    """Parse lane config *text*; *source* names it in errors."""
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        where, problem = explain(exc, text)
        raise ConfigError(source, where, f"not valid YAML: {problem}") from None
    root = _At(source, "", data)
    root.mapping({"tag", "label_key", "lanes", "coloring", "entry", "services", "proxy", "mesh"}, {"services", "entry"})
    tag = _parse_tag(root.child("tag"))
    label_key = root.child("label_key").string("version")
    if not LABEL_KEY.fullmatch(label_key):
        raise root.child("label_key").fail(f"expected a Kubernetes label key, got {label_key!r}")
    lanes = _parse_lanes(root.child("lanes"), tag.default_lane)
    rules = tuple(
        _parse_rule(node, i, lanes) for i, node in enumerate(root.child("coloring").elements())
    ) if root.has("coloring") and root.child("coloring").value is not None else ()
    services = {name: _parse_service(node, name, lanes) for name, node in root.child("services").items()}
    if not services:
        raise root.child("services").fail("expected at least one service")
    hosts: dict[str, str] = {}
    for svc in services.values():
        if svc.host in hosts and hosts[svc.host] != svc.name:
            raise root.child("services").child(svc.name).child("host").fail(
                f"host {svc.host!r} is already used by service {hosts[svc.host]!r}"
            )
        hosts[svc.host] = svc.name
    entry = root.child("entry").string()
    if entry not in services:
        raise root.child("entry").fail(f"unknown service {entry!r}; services: {', '.join(sorted(services))}")
    mesh = _parse_mesh(root.child("mesh"))
    for i, host in enumerate(mesh.gateway.hosts):
        owner = hosts.get(host)
        if owner is not None and owner != entry:  # the entry's VirtualService would claim it too
            raise root.child("mesh").child("gateway").child("hosts").child(i).fail(
                f"{host!r} is the host of service {owner!r}: two VirtualServices bound to the mesh would "
                "claim it (istioctl analyze IST0109)")
    return LaneConfig(
        source=source,
        tag=tag,
        label_key=label_key,
        lanes=lanes,
        rules=rules,
        services=MappingProxyType(services),
        entry=entry,
        proxy=_parse_proxy(root.child("proxy")),
        mesh=mesh,
    )


def load_config(path: str | Path) -> LaneConfig:
    """Read and parse the lane config at *path*."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "", f"not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    return parse_config(text, str(path))


def load_config_or_demo(path: str | Path | None, *, demo: bool = True, command: str = "lane") -> LaneConfig:
    """The config at *path*; without one, the embedded demo config when *demo* allows it.

    A proxy started without its config in a real deployment must not quietly serve the demo's
    services (a -> b -> c on 127.0.0.1): ``lane gateway`` and ``lane sidecar`` pass ``demo=args.demo``
    and refuse, naming what they need (``--demo`` is explicit).
    """
    if path:
        return load_config(path)
    if not demo:
        raise ConfigError(command, "", "needs --config FILE (or $LANE_CONFIG), the lane config it serves; "
                          "--demo serves the embedded demo config")
    return parse_config(demo_config_text(), DEMO_SOURCE)


def demo_config_text() -> str:
    """The embedded default config (the classic a -> b -> c topology)."""
    return resources.files("lane").joinpath("examples/demo.yaml").read_text(encoding="utf-8")
