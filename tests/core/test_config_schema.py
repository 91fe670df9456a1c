"""`lane schema`: the JSON Schema an editor checks lane files with says what the loader says.

The schema is generated from the config dataclasses and `lane.core.config.LIMITS`; these tests hold it to
the real loader from both sides: every config the loader accepts (the examples and the configs the
other tests use) is valid, and a file the loader refuses for an unknown key, a wrong type or a number
out of range is invalid too. The shipped copy in docs/ must be what `lane schema` prints today.
"""

from __future__ import annotations

import ast
import copy
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import yaml

from lane.core.config import LIMITS
from lane.core.config_load import parse_config
from lane.core.config_schema import config_schema, schema_text
from lane.core.errors import ConfigError
from tests.support.processes import REPO

SCHEMA = config_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
SHIPPED = REPO / "docs" / "lane-config.schema.json"
REFERENCE = REPO / "examples" / "reference.yaml"
REFERENCE_DATA: dict[str, Any] = yaml.safe_load(REFERENCE.read_text(encoding="utf-8"))


def test_the_shipped_schema_is_what_lane_schema_prints() -> None:
    printed = subprocess.run([sys.executable, "-m", "lane", "schema"], capture_output=True, text=True,
                             check=True, cwd=REPO, timeout=60)
    assert json.loads(printed.stdout) == SCHEMA
    assert SHIPPED.read_text(encoding="utf-8") == schema_text(), (
        "docs/lane-config.schema.json is stale: run `lane schema > docs/lane-config.schema.json`")


def test_the_schema_is_valid_for_2020_12_and_for_draft_07_editors() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator.check_schema(SCHEMA)  # yaml-language-server (VS Code YAML) implements draft-07
    assert jsonschema.Draft7Validator(SCHEMA).is_valid(REFERENCE_DATA)


def test_the_reference_points_editors_at_the_shipped_schema() -> None:
    first = REFERENCE.read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=../docs/lane-config.schema.json"
    assert (REFERENCE.parent / "../docs/lane-config.schema.json").resolve() == SHIPPED.resolve()


def _strings(tree: ast.Module) -> Iterator[str]:
    """Every string a test module spells, with module-level names and ``+`` resolved, dedented."""
    names: dict[str, str] = {}

    def value(node: ast.AST) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            return names.get(node.id)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = value(node.left), value(node.right)
            return left + right if left is not None and right is not None else None
        called = getattr(node, "func", None)
        callee = getattr(called, "attr", getattr(called, "id", ""))
        if isinstance(node, ast.Call) and node.args and callee == "dedent":
            inner = value(node.args[0])
            return textwrap.dedent(inner) if inner is not None else None
        return None

    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            text = value(stmt.value)
            if text is not None:
                names[stmt.targets[0].id] = text
    for node in ast.walk(tree):
        text = value(node) if isinstance(node, (ast.Constant, ast.BinOp, ast.Call)) else None
        if text is not None and "services" in text:
            yield text


def _accepted_configs() -> dict[str, str]:
    """Every config text the loader accepts: the examples and those spelled in tests/."""
    found = {"examples/demo.yaml": (REPO / "examples" / "demo.yaml").read_text(encoding="utf-8"),
             "examples/reference.yaml": REFERENCE.read_text(encoding="utf-8")}
    for path in sorted((REPO / "tests").rglob("*.py")):
        for i, text in enumerate(_strings(ast.parse(path.read_text(encoding="utf-8")))):
            try:
                parse_config(text)
            except ConfigError:
                continue
            found[f"{path.relative_to(REPO / 'tests')}#{i}"] = text
    return found


ACCEPTED = _accepted_configs()


def test_the_test_configs_were_found() -> None:
    assert len(ACCEPTED) > 30, sorted(ACCEPTED)


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_every_config_the_loader_accepts_is_valid(name: str) -> None:
    data = yaml.safe_load(ACCEPTED[name])
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(data)]
    assert not errors, errors


def _both_refuse(data: Any) -> None:
    with pytest.raises(ConfigError):
        parse_config(yaml.safe_dump(data), "x.yaml")
    assert not VALIDATOR.is_valid(data), data


def _both_accept(data: Any) -> None:
    parse_config(yaml.safe_dump(data), "x.yaml")
    assert VALIDATOR.is_valid(data), list(VALIDATOR.iter_errors(data))[:1]


def _mappings(data: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every mapping in *data* whose keys are the config's keys (not names, labels or lanes)."""
    if isinstance(data, dict):
        named = path[-1:] in (("lanes",), ("services",), ("instances",), ("selector",))
        if not named:
            yield path
        for key, value in data.items():
            yield from _mappings(value, (*path, key))
    elif isinstance(data, list):
        for i, item in enumerate(data):
            yield from _mappings(item, (*path, i))


def _at(data: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        data = data[step]
    return data


def _id(path: tuple[Any, ...]) -> str:
    return ".".join(map(str, path)) or "(top)"


@pytest.mark.parametrize("path", list(_mappings(REFERENCE_DATA)), ids=_id)
def test_an_unknown_key_anywhere_is_refused_by_both(path: tuple[Any, ...]) -> None:
    data = copy.deepcopy(REFERENCE_DATA)
    _at(data, path)["colour"] = "x"
    _both_refuse(data)


def _scalars(data: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _scalars(value, (*path, key))
    elif isinstance(data, list):
        for i, item in enumerate(data):
            yield from _scalars(item, (*path, i))
    else:
        yield path


@pytest.mark.parametrize("path", list(_scalars(REFERENCE_DATA)), ids=_id)
def test_a_value_of_the_wrong_type_anywhere_is_refused_by_both(path: tuple[Any, ...]) -> None:
    data = copy.deepcopy(REFERENCE_DATA)
    _at(data, path[:-1])[path[-1]] = {"a": ["b"]}
    _both_refuse(data)


def _where(key: str) -> tuple[Any, ...]:
    """Where the reference holds the number `LIMITS[key]` bounds."""
    section, _, name = key.partition(".")
    if section == "services":
        return ("services", "frontend", name)
    if section == "coloring":
        rule = next(i for i, r in enumerate(REFERENCE_DATA["coloring"]) if "percentage" in r)
        return ("coloring", rule, *name.split("."))
    return (section, *name.split("."))


@pytest.mark.parametrize("key", sorted(LIMITS))
def test_every_number_range_is_the_same_in_both(key: str) -> None:
    path = _where(key)
    lo, hi = LIMITS[key]
    integer = isinstance(_at(REFERENCE_DATA, path), int)
    step = 1 if integer else max(lo / 2, 0.0005)
    for value, accepted in ((lo, True), (hi, True), (lo - step, False), (hi + (1 if integer else hi), False)):
        data = copy.deepcopy(REFERENCE_DATA)
        _at(data, path[:-1])[path[-1]] = int(value) if integer else value
        (_both_accept if accepted else _both_refuse)(data)
    if integer:
        data = copy.deepcopy(REFERENCE_DATA)
        _at(data, path[:-1])[path[-1]] = lo + 0.5
        _both_refuse(data)


@pytest.mark.parametrize("change", [
    "lanes: {Gray: {}}",                      # a lane that is no DNS label
    "entry: ''",                              # empty
    "coloring: [{lane: gray, match: {headers: [{name: a, exact: b, prefix: c}]}}]",   # two matchers
    "coloring: [{lane: gray, match: {headers: [{name: 'a b', exact: b}]}}]",          # no header name
    "coloring: [{lane: gray, match: {cookies: [{name: a, absent: true}]}}]",          # no cookie `absent`
    "coloring: [{lane: gray, match: {headers: [{name: a, present: false}]}}]",        # present must be true
    "coloring: [{lane: gray}]",                                                       # no match or percentage
    "coloring: [{lane: gray, percentage: {percent: 5, key: {header: a, cookie: b}}}]",  # two keys
    "coloring: [{lane: gray, percentage: {percent: 5, salt: 3}}]",                    # salt not a string
    "services: {}",                                                                   # no service
    "services: {a: {host: h}}",                                                   # no instances or selector
    "services: {a: {instances: {base: [nope]}}}",                                     # no host:port
    "tag: {header: 'x tag'}",
    "label_key: 'a b'",
    "mesh: {gateway: null}",
    "services: {a: {instances: {base: ['127.0.0.1:1']}, protocol: http2}}",      # not a protocol lane knows
])
def test_a_config_the_loader_refuses_is_invalid(change: str) -> None:
    data = {"entry": "a", "lanes": {"gray": {}}, "services": {"a": {"instances": {"base": ["127.0.0.1:1"]}}}}
    data.update(yaml.safe_load(change))
    _both_refuse(data)


def test_the_schema_reads_like_the_reference() -> None:
    """Every key the schema knows is one the reference shows: an editor never offers an undocumented key."""
    def keys(schema: dict[str, Any], path: str) -> Iterator[str]:
        for name, sub in schema.get("properties", {}).items():
            yield f"{path}{name}"
            yield from keys(sub, f"{path}{name}.")
        for part in ("items", "additionalProperties"):
            if isinstance(schema.get(part), dict):
                yield from keys(schema[part], f"{path}*.")

    def shown(data: Any, path: str) -> Iterator[str]:
        if isinstance(data, dict):
            for name, value in data.items():
                yield f"{path}{name}"
                yield from shown(value, f"{path}{name}.")
                yield from shown(value, f"{path}*.")
        elif isinstance(data, list):
            for item in data:
                yield from shown(item, f"{path}*.")

    missing = set(keys(SCHEMA, "")) - set(shown(REFERENCE_DATA, ""))
    assert not missing, f"keys in the schema that examples/reference.yaml does not show: {sorted(missing)}"



def test_every_setting_has_the_references_words_as_its_hover_text() -> None:
    """A key of tag, lanes, services, proxy or mesh without a comment in the reference fails here."""
    def undescribed(schema: dict[str, Any], path: str) -> Iterator[str]:
        for name, sub in schema.get("properties", {}).items():
            if "description" not in sub:
                yield f"{path}{name}"
            yield from undescribed(sub, f"{path}{name}.")
        if isinstance(schema.get("additionalProperties"), dict):  # a lane's or a service's settings
            yield from undescribed(schema["additionalProperties"], f"{path}*.")

    sections = {k: SCHEMA["properties"][k] for k in ("tag", "lanes", "services", "proxy", "mesh")}
    missing = [p for name, sub in sections.items() for p in undescribed(sub, f"{name}.")]
    assert not missing, f"say in a comment in examples/reference.yaml what these are for: {missing}"
    assert SCHEMA["properties"]["proxy"]["properties"]["retries"]["description"].startswith("extra attempts")


def test_the_defaults_the_schema_offers_are_what_the_loader_gives() -> None:
    """Editors complete these values: each must be what leaving the key out means."""
    config = parse_config("entry: a\nservices: {a: {instances: {base: ['127.0.0.1:1']}}}\n")
    props = SCHEMA["properties"]
    service, lane = (props[k]["additionalProperties"]["properties"] for k in ("services", "lanes"))
    assert props["label_key"]["default"] == config.label_key
    assert service["port"]["default"] == config.services["a"].port
    assert service["protocol"]["default"] == config.services["a"].protocol
    assert lane["strict"]["default"] is config.lanes["base"].strict
    for section in ("tag", "proxy", "mesh"):
        written = {k: v["default"] for k, v in props[section]["properties"].items() if "default" in v}
        assert _reparsed_section(section, written) == getattr(config, section), section


def _reparsed_section(section: str, values: dict[str, Any]) -> Any:
    data = {"entry": "a", "services": {"a": {"instances": {"base": ["127.0.0.1:1"]}}}, section: values}
    return getattr(parse_config(yaml.safe_dump(data)), section)
