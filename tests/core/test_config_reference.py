"""examples/reference.yaml is the complete config reference: it loads, names every key, and tells the truth.

A key added to a config dataclass without a line in the reference fails here, and so does a default
the reference states that is not what the loader gives when the key is left out.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from lane.core import config as config_module
from lane.core import endpoint as endpoint_module
from lane.core import tags as tags_module
from lane.core.config import LaneConfig, MeshSpec, ProxySpec
from lane.core.config_load import load_config, parse_config
from lane.core.tags import TagSpec
from tests.support.processes import REPO

REFERENCE = REPO / "examples" / "reference.yaml"
TEXT = REFERENCE.read_text(encoding="utf-8")
DATA: dict[str, Any] = yaml.safe_load(TEXT)


def _reparsed(data: Any) -> LaneConfig:
    return parse_config(yaml.safe_dump(data, sort_keys=False), str(REFERENCE))


def test_the_reference_loads_with_the_real_loader() -> None:
    config = load_config(REFERENCE)
    assert config.entry == "frontend" and set(config.lanes) == {"base", "gray", "gray-2", "canary"}
    assert config.lanes["canary"].strict and config.chain("gray-2") == ("gray-2", "gray", "base")


def _keys_of(mapping: Any) -> set[str]:
    assert isinstance(mapping, dict), mapping
    return set(mapping)


def _union(mappings: Any) -> set[str]:
    return set().union(*(_keys_of(m) for m in mappings.values()))


# Where each config dataclass's fields are written in the file, and the fields that are no key of theirs.
WHERE = {
    "LaneConfig": (lambda d: {*_keys_of(d), "rules"} - {"coloring"} if "coloring" in d else _keys_of(d),
                   {"source"}),
    "TagSpec": (lambda d: _keys_of(d["tag"]), set()),
    "Lane": (lambda d: _union(d["lanes"]), {"name"}),  # the lane's name is its key under `lanes`
    "Service": (lambda d: _union(d["services"]), {"name"}),  # the service's name is its key
    "Endpoint": (lambda d: set(), {"host", "port"}),  # written as "host:port" under `instances`
    "ProxySpec": (lambda d: _keys_of(d["proxy"]), set()),
    "MeshSpec": (lambda d: _keys_of(d["mesh"]), set()),
    "MeshGatewaySpec": (lambda d: _keys_of(d["mesh"]["gateway"]), set()),
}


def _config_dataclasses() -> list[type]:
    """The config model's dataclasses: those of `lane.core.config` and the two it shares with the
    light core (`TagSpec` in `lane.core.tags`, `Endpoint` in `lane.core.endpoint`)."""
    modules = (config_module, tags_module, endpoint_module)
    return [obj for module in modules for obj in vars(module).values()
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__]


def test_every_field_of_every_config_dataclass_is_in_the_reference() -> None:
    classes = _config_dataclasses()
    assert {c.__name__ for c in classes} >= {"ProxySpec", "MeshSpec", "TagSpec", "Service", "Lane"}
    for cls in classes:
        assert cls.__dataclass_params__.frozen, f"{cls.__name__} must be frozen"  # type: ignore[attr-defined]
        assert cls.__name__ in WHERE, f"new config dataclass {cls.__name__}: add it to WHERE"
        written, not_keys = WHERE[cls.__name__]
        missing = {f.name for f in dataclasses.fields(cls)} - not_keys - written(DATA)
        assert not missing, f"examples/reference.yaml lacks {cls.__name__} keys {sorted(missing)}"


def test_the_endpoints_show_both_address_forms() -> None:
    config = load_config(REFERENCE)
    hosts = [ep.host for svc in config.services.values() for eps in svc.instances.values() for ep in eps]
    assert "127.0.0.1" in hosts and "::1" in hosts


def test_sections_written_out_hold_exactly_the_defaults() -> None:
    config = load_config(REFERENCE)
    assert config.tag == TagSpec() and config.proxy == ProxySpec() and config.mesh == MeshSpec()
    without = {k: v for k, v in DATA.items() if k not in ("tag", "proxy", "mesh", "label_key")}
    assert _reparsed(without) == config


def _key_lines(node: yaml.Node, path: tuple[Any, ...] = ()) -> Iterator[tuple[int, tuple[Any, ...]]]:
    """(line number, path) of every mapping key in the composed YAML."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield key.start_mark.line, (*path, key.value)
            yield from _key_lines(value, (*path, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _key_lines(item, (*path, i))


DEFAULT_COMMENT = re.compile(r"#\s*default:\s*(\"\"|[^\s.;,]+)[.;,]?(\s|$)")


def _stated_defaults() -> list[tuple[tuple[Any, ...], Any]]:
    lines = dict(_key_lines(yaml.compose(TEXT)))
    out = []
    for number, line in enumerate(TEXT.splitlines()):
        found = DEFAULT_COMMENT.search(line)
        if found and number in lines:
            literal = yaml.safe_load(found.group(1))
            if isinstance(literal, (int, float, bool)) or found.group(1) in ('""', "version"):
                out.append((lines[number], literal))
    return out


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        data = data[step]
    return data


@pytest.mark.parametrize("path, stated", _stated_defaults(),
                         ids=lambda v: ".".join(map(str, v)) if isinstance(v, tuple) else None)
def test_a_stated_default_is_written_and_is_what_leaving_the_key_out_gives(path: tuple[Any, ...],
                                                                           stated: Any) -> None:
    assert _get(DATA, path) == stated, f"{path}: the comment says default {stated!r}, the value differs"
    data = copy.deepcopy(DATA)
    del _get(data, path[:-1])[path[-1]]
    assert _reparsed(data) == load_config(REFERENCE), f"leaving out {path} changes the config"


def test_there_are_stated_defaults_to_check() -> None:
    stated = {p[-1] for p, _ in _stated_defaults()}
    assert {"label_key", "strict", "salt", "port"} <= stated, stated

