"""`mesh_config.calls`: the call graph and forwarding of verify's stub apps, and bad input.

Pure functions, no Envoy: the real chain through Envoy is in tests/mesh_config/test_mesh_envoy.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lane.core.config_load import load_config, parse_config
from lane.core.errors import ConfigError
from mesh_config.calls import (
    Forward,
    check_calls,
    decode_forward,
    default_calls,
    encode_forward,
    parse_calls,
    parse_forward,
)
from mesh_config.vectors import load_vectors
from tests.support.mesh_vectors import CHAIN_CONFIG

DEMO = load_config(Path(__file__).resolve().parents[2] / "examples" / "demo.yaml")


def test_default_call_graph_is_one_chain_from_the_entry_in_config_order() -> None:
    assert dict(default_calls(DEMO)) == {"a": ("b",), "b": ("c",), "c": ("d",)}
    chain = parse_config(CHAIN_CONFIG.replace("entry: front", "entry: pay"), "chain.yaml")
    assert dict(default_calls(chain)) == {"pay": ("front",), "front": ("cart",), "cart": ("ledger",)}


def test_calls_state_the_real_graph_and_unnamed_services_call_nobody() -> None:
    graph = parse_calls(DEMO, ["a=b, d", "b=c", "d=c", "c="])
    assert dict(graph) == {"a": ("b", "d"), "b": ("c",), "d": ("c",), "c": ()}


@pytest.mark.parametrize(("specs", "message"), [
    (["a"], "expected SERVICE=CALLEE"),
    (["a=b", "a=c"], "the calls of a are given twice"),
    (["a=b,b"], "a callee is named twice"),
    (["a=x"], "no service 'x' in the config (services: a, b, c, d)"),
    (["x=a"], "no service 'x'"),
    (["a=a"], "cycle: a -> a"),
    (["a=b", "b=c", "c=b"], "cycle: b -> c -> b"),
    (["a=b", "c=d"], "c cannot be reached from the entry a"),
])
def test_bad_call_graphs_are_refused_with_the_reason(specs: list[str], message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_calls(DEMO, specs)
    assert message in str(info.value)


def test_a_graph_given_as_data_is_checked_too() -> None:
    with pytest.raises(ValueError, match="cycle: a -> b -> a"):
        check_calls(DEMO, {"a": ["b"], "b": ["a"]})
    assert dict(check_calls(DEMO, {"a": ["d"]})) == {"a": ("d",)}


def test_forward_defaults_to_tag_and_later_items_win() -> None:
    assert set(parse_forward(DEMO, []).values()) == {Forward.TAG}
    modes = parse_forward(DEMO, ["baggage", "c=tag"])
    assert dict(modes) == {"a": Forward.BAGGAGE, "b": Forward.BAGGAGE, "c": Forward.TAG, "d": Forward.BAGGAGE}
    with pytest.raises(ValueError, match="unknown mode 'both'"):
        parse_forward(DEMO, ["b=both"])
    with pytest.raises(ValueError, match="no service 'q'"):
        parse_forward(DEMO, ["q=tag"])


def test_forward_header_round_trips_and_ignores_junk() -> None:
    modes = parse_forward(DEMO, ["b=baggage"])
    assert encode_forward(modes) == "a=tag,b=baggage,c=tag,d=tag"
    assert decode_forward(encode_forward(modes)) == dict(modes)
    assert decode_forward("b=pigeon, c=baggage,,=") == {"c": Forward.BAGGAGE}
    assert decode_forward(None) == {}


def test_vectors_file_states_forwarding_per_vector(tmp_path: Path) -> None:
    path = tmp_path / "v.yaml"
    path.write_text("- {name: a, forward: baggage}\n- {name: b, forward: {b: baggage}}\n"
                    "- {name: c, forward: [b=baggage, c=tag]}\n- {name: d}\n")
    assert [v.forward for v in load_vectors(path)] == [("baggage",), ("b=baggage",), ("b=baggage", "c=tag"), ()]
    path.write_text("- {name: a, forward: [1]}\n")
    with pytest.raises(ConfigError, match=r"v\.yaml\[0\]: forward: expected MODE"):
        load_vectors(path)
