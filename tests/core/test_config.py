"""The lane config: what a valid file means, and one test per class of mistake naming its path."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from textwrap import dedent

import pytest

from lane.core.config import DEFAULT_TRACE_HEADERS
from lane.core.config_load import demo_config_text, load_config, parse_config
from lane.core.errors import ConfigError
from lane.core.rules import Source

REPO = Path(__file__).resolve().parents[2]

MINIMAL = """
entry: a
services:
  a:
    instances:
      base: ["127.0.0.1:9001"]
"""


def cfg(text: str) -> str:
    return dedent(text)


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(dedent(text), "lanes.yaml")
    return info.value


def test_demo_example_describes_the_classic_topology() -> None:
    config = load_config(REPO / "examples/demo.yaml")
    assert config.tag.header == "x-mse-tag" and config.tag.baggage_key == "x-mse-tag"
    assert config.default_lane == "base" and config.label_key == "version"
    assert config.entry == "a"
    assert {name: svc.lanes for name, svc in config.services.items()} == {
        "a": ("base", "gray"), "b": ("base",), "c": ("base", "gray"), "d": ("base",),
    }
    rule, grpc_rule = config.rules  # curl -A xiaoming; xiaoming's gRPC client (grpc appends its own agent)
    assert (rule.lane, rule.conditions[0].source, rule.conditions[0].name) == ("gray", Source.HEADER, "user-agent")
    assert (rule.conditions[0].match.kind, rule.conditions[0].match.value) == ("exact", "xiaoming")
    assert (grpc_rule.name, grpc_rule.lane, grpc_rule.conditions[0].name) == ("xiaoming-grpc", "gray", "user-agent")
    assert (grpc_rule.conditions[0].match.kind, grpc_rule.conditions[0].match.value) == ("prefix", "xiaoming grpc-")


def test_embedded_default_is_the_documented_example() -> None:
    assert demo_config_text() == (REPO / "examples/demo.yaml").read_text(encoding="utf-8")


def test_defaults_when_only_services_and_entry_are_given() -> None:
    config = parse_config(MINIMAL)
    assert config.tag.header == "x-mse-tag" and config.default_lane == "base"
    assert config.proxy.trace_headers == DEFAULT_TRACE_HEADERS
    assert config.rules == ()
    assert config.chain("base") == ("base",)


def test_fallback_chain_walks_to_the_default_lane() -> None:
    config = parse_config(cfg("""
        lanes:
          gray: {}
          dev-alice: {fallback: gray}
          dev-bob: {fallback: dev-alice, strict: true}
        entry: a
        services:
          a: {instances: {base: ["127.0.0.1:1"], gray: ["127.0.0.1:2"]}}
          b: {instances: {base: ["127.0.0.1:3"], dev-alice: ["127.0.0.1:4"]}}
    """))
    assert config.chain("dev-bob") == ("dev-bob", "dev-alice", "gray", "base")
    assert config.chain("unknown") == ("base",)
    assert config.lane_for("a", "dev-alice") == "gray"
    assert config.lane_for("b", "dev-alice") == "dev-alice"
    assert config.lane_for("b", "gray") == "base"
    assert config.lane_for("a", "dev-bob") is None  # strict: no fallback
    assert config.lane_for("a", "gray", has=lambda s, lane: lane == "base") == "base"
    assert config.lane_for("nope", "gray") is None


def test_service_is_found_by_name_host_and_port() -> None:
    config = parse_config(cfg("""
        entry: a
        services:
          a: {host: a.shop.svc.cluster.local, port: 8080, instances: {base: ["[::1]:9001"]}}
    """))
    svc = config.services["a"]
    assert str(svc.instances["base"][0]) == "[::1]:9001"
    for host in ("a", "A", "a:8080", "a.shop.svc.cluster.local", "a.shop.svc.cluster.local."):
        assert config.service_by_host(host) is svc
    assert config.service_by_host("b") is None


def test_proxy_and_mesh_sections_are_typed() -> None:
    config = parse_config(MINIMAL + cfg("""
        proxy:
          connect_timeout: 0.5
          trusted_cidrs: ["10.0.0.0/8"]
          trace_headers: [X-Request-Id]
        mesh:
          namespace: shop
          gateway: {hosts: [shop.example.com]}
    """))
    assert config.proxy.connect_timeout == 0.5
    assert config.proxy.trusted_cidrs == (ipaddress.ip_network("10.0.0.0/8"),)
    assert config.proxy.trace_headers == ("x-request-id",)
    assert config.mesh.namespace == "shop" and config.mesh.gateway.hosts == ("shop.example.com",)


def test_config_is_frozen() -> None:
    config = parse_config(MINIMAL)
    with pytest.raises(AttributeError):
        config.entry = "b"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.services["x"] = config.services["a"]  # type: ignore[index]


# --- one test per class of mistake; each message names file, path and what was expected ---

def test_broken_yaml_names_the_file_and_line() -> None:
    err = error_of("entry: a\nservices: [unclosed\n")
    assert str(err).startswith("lanes.yaml") and "not valid YAML" in str(err) and "line" in str(err)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(MINIMAL.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte \d+"):
        load_config(bad)


def test_unknown_key_names_its_path_and_the_allowed_keys() -> None:
    err = error_of(MINIMAL + "coloring:\n  - lane: base\n    match: {headers: [{name: a, exakt: b}]}\n")
    assert err.path == "coloring[0].match.headers[0].exakt"
    assert "unknown key" in err.problem and "exact" in err.problem


def test_top_level_unknown_key() -> None:
    err = error_of(MINIMAL + "lanez: {}\n")
    assert err.path == "lanez" and "expected one of" in err.problem


def test_bad_regex_names_the_rule_path() -> None:
    err = error_of(MINIMAL + "coloring:\n  - lane: base\n    match: {headers: [{name: ua, regex: 'xiao(ming'}]}\n")
    assert err.path == "coloring[0].match.headers[0].regex" and "invalid regex" in err.problem


def test_regex_outside_re2_is_rejected() -> None:
    err = error_of(MINIMAL + "coloring:\n  - lane: base\n    match: {headers: [{name: ua, regex: '(?=x)y'}]}\n")
    assert err.path == "coloring[0].match.headers[0].regex" and "RE2" in err.problem


def test_unknown_lane_in_rule() -> None:
    err = error_of(MINIMAL + "coloring:\n  - lane: grey\n    match: {headers: [{name: ua, exact: x}]}\n")
    assert err.path == "coloring[0].lane" and "unknown lane 'grey'" in err.problem


def test_unknown_lane_in_service_instances() -> None:
    err = error_of("entry: a\nservices:\n  a: {instances: {base: ['127.0.0.1:1'], gray: ['127.0.0.1:2']}}\n")
    assert err.path == "services.a.instances.gray" and "unknown lane" in err.problem


def test_unknown_fallback_lane() -> None:
    err = error_of(MINIMAL + "lanes:\n  gray: {fallback: silver}\n")
    assert err.path == "lanes.gray.fallback" and "unknown lane 'silver'" in err.problem


def test_fallback_cycle_is_rejected_and_shown() -> None:
    err = error_of(MINIMAL + "lanes:\n  x: {fallback: y}\n  y: {fallback: x}\n")
    assert err.path.startswith("lanes.") and "fallback cycle" in err.problem and "x -> y -> x" in err.problem


def test_default_lane_cannot_fall_back() -> None:
    err = error_of(MINIMAL + "lanes:\n  gray: {}\n  base: {fallback: gray}\n")
    assert err.path == "lanes.base.fallback"


def test_duplicate_service_is_rejected() -> None:
    err = error_of(MINIMAL + "  a:\n    instances: {base: ['127.0.0.1:2']}\n")
    assert "duplicate key 'a'" in str(err)


def test_two_services_claiming_one_host() -> None:
    err = error_of("entry: a\nservices:\n  a: {host: x, instances: {base: ['h:1']}}\n  b: {host: x, instances: {base: ['h:2']}}\n")
    assert err.path == "services.b.host" and "already used" in err.problem


def test_unknown_entry_service() -> None:
    err = error_of("entry: z\nservices:\n  a: {instances: {base: ['127.0.0.1:1']}}\n")
    assert err.path == "entry" and "unknown service 'z'" in err.problem


def test_invalid_lane_name() -> None:
    err = error_of(MINIMAL + "lanes:\n  Gray_1: {}\n")
    assert err.path == "lanes.Gray_1" and "DNS labels" in err.problem


def test_bad_endpoint() -> None:
    err = error_of("entry: a\nservices:\n  a: {instances: {base: ['127.0.0.1']}}\n")
    assert err.path == "services.a.instances.base[0]" and "host:port" in err.problem


def test_a_service_speaks_http_unless_it_says_grpc() -> None:
    config = parse_config(MINIMAL + "  b: {protocol: grpc, instances: {base: ['127.0.0.1:9002']}}\n")
    assert (config.services["a"].protocol, config.services["a"].grpc) == ("http", False)
    assert (config.services["b"].protocol, config.services["b"].grpc) == ("grpc", True)


@pytest.mark.parametrize("value", ["GRPC", "http2", "grpc-web", "h2c", "''"])
def test_an_unknown_protocol_names_the_service_and_the_choices(value: str) -> None:
    err = error_of(f"entry: a\nservices:\n  a: {{protocol: {value}, instances: {{base: ['127.0.0.1:1']}}}}\n")
    assert err.path == "services.a.protocol"
    assert "expected one of http, grpc" in err.problem or "non-empty string" in err.problem
    assert "\n" not in str(err)


def test_percentage_out_of_range() -> None:
    err = error_of(MINIMAL + "coloring:\n  - lane: base\n    percentage: {percent: 101}\n")
    assert err.path == "coloring[0].percentage.percent" and "0 to 100" in err.problem


def test_rule_without_conditions() -> None:
    err = error_of(MINIMAL + "coloring:\n  - lane: base\n")
    assert err.path == "coloring[0]" and "needs" in err.problem


def test_missing_required_keys() -> None:
    err = error_of("services:\n  a: {instances: {base: ['127.0.0.1:1']}}\n")
    assert err.path == "entry" and "required" in err.problem


def test_wrong_type_says_what_was_expected() -> None:
    err = error_of(MINIMAL + "proxy: {retries: many}\n")
    assert err.path == "proxy.retries" and "integer" in err.problem


def test_bad_cidr() -> None:
    err = error_of(MINIMAL + "proxy: {trusted_cidrs: ['10.0.0.0/99']}\n")
    assert err.path == "proxy.trusted_cidrs[0]" and "CIDR" in err.problem
