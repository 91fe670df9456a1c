"""The lane config's JSON Schema (draft 2020-12), so editors complete and check lane files.

Generated, never written by hand beside the parser: each section's keys, value types and defaults
come from the frozen dataclasses of `lane.core.config` (`ProxySpec`, `MeshSpec`, ...), every number's
range from `lane.core.config.LIMITS` (the table the parser enforces), and the patterns from the same
regexes the parser uses. Only the shapes with no dataclass of their own (a coloring rule's
``match`` and ``percentage``, a service's ``instances``) are spelled out here;
`tests/core/test_config_schema.py` holds them to the parser by feeding both the same good and bad files.
What an editor shows on hover is each key's comment in ``examples/reference.yaml`` (shipped in the
package beside the demo config), so the words, too, are written once.

The keywords used mean the same in draft-07, which is what yaml-language-server (VS Code YAML)
implements, so one file serves both it and JetBrains IDEs.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import sys
import typing
from collections.abc import Mapping
from importlib import resources
from typing import Any, Final

import yaml

from lane.core.baggage import TOKEN
from lane.core.config import (
    DEFAULT_PROTOCOL,
    LIMITS,
    PROTOCOLS,
    Lane,
    MeshGatewaySpec,
    MeshSpec,
    ProxySpec,
    Service,
)
from lane.core.config_load import LABEL_KEY, MATCH_KINDS
from lane.core.tags import LANE_PATTERN, TagSpec

__all__ = ["add_arguments", "config_schema", "run", "schema_text"]

_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

_LANE: Final[dict[str, Any]] = {"type": "string", "pattern": f"^(?:{LANE_PATTERN.pattern})$", "maxLength": 63}
_TOKEN: Final[dict[str, Any]] = {"type": "string", "pattern": f"^(?:{TOKEN.pattern})$"}
_TEXT: Final[dict[str, Any]] = {"type": "string", "minLength": 1}
_CIDR: Final = r"^[0-9A-Fa-f.:]+(/[0-9]{1,3})?$"  # the shape; `ipaddress` checks the bits
_STRING_MAP: Final[dict[str, Any]] = {"type": ["object", "null"], "additionalProperties": _TEXT}
# What the parser checks beyond the type; the parser's own error says the rest (e.g. a CIDR's bits).
_SPECIAL: Final[Mapping[str, dict[str, Any]]] = {
    "tag.header": _TOKEN,
    "tag.baggage_key": _TOKEN,
    "tag.default_lane": _LANE,
    "lanes.fallback": _LANE,
    "proxy.trace_headers": {"type": "array", "items": _TOKEN},
    "proxy.trusted_cidrs": {"type": "array", "items": {"type": "string", "pattern": _CIDR}},
    "mesh.gateway.hosts": {"type": "array", "items": _TEXT},
    "mesh.gateway.selector": _STRING_MAP,
    "services.selector": _STRING_MAP,
    "services.protocol": {"type": "string", "enum": list(PROTOCOLS)},
}


def _described(text: str) -> dict[tuple[str, ...], str]:
    """Each key's comment in the reference, by schema location (``*`` for a name or a list item).

    The comment on a key's line, plus the comment-only lines right below it that start in the same
    column, is what an editor shows on hover: the reference's words, never a second copy of them.
    """
    lines = text.splitlines()
    out: dict[tuple[str, ...], str] = {}
    claimed: set[int] = set()  # a line's comment belongs to its first key (``key: {cookie: uid}  # ...``)

    def walk(node: yaml.Node, path: tuple[str, ...], named: bool) -> None:
        if isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item, (*path, "*"), False)
        if not isinstance(node, yaml.MappingNode):
            return
        for key, value in node.value:
            here = (*path, "*" if named else key.value)
            number = key.start_mark.line
            line = lines[number]
            # The comment starts after the value when the value is on this line, else after the key.
            after = value.end_mark.column if value.end_mark.line == number else key.end_mark.column
            column = line.find("#", after)
            if column >= 0 and number not in claimed:
                claimed.add(number)
                words = [line[column + 1:].strip()]
                for below in lines[number + 1:]:
                    if below.find("#") != column or below[:column].strip():
                        break
                    words.append(below[column + 1:].strip())
                if not named:
                    out.setdefault(here, " ".join(words))
            walk(value, here, key.value in _NAMED and not named)

    walk(yaml.compose(text), (), False)
    return out


_NAMED: Final = frozenset({"lanes", "services", "instances", "selector"})  # mappings keyed by names


def _with_descriptions(schema: dict[str, Any], described: Mapping[tuple[str, ...], str],
                       path: tuple[str, ...] = ()) -> None:
    for name, sub in schema.get("properties", {}).items():
        if (*path, name) in described:
            sub.setdefault("description", described[(*path, name)])
        _with_descriptions(sub, described, (*path, name))
    for part in ("items", "additionalProperties"):
        if isinstance(schema.get(part), dict):
            _with_descriptions(schema[part], described, (*path, "*"))


def _json_default(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_json_default(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _json_default(v) for k, v in value.items()}
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)
    return value


def _knob(path: str, kind: Any, default: Any) -> dict[str, Any]:
    """The schema of one setting from its dataclass type, `LIMITS` and `_SPECIAL`."""
    if path in _SPECIAL:
        schema = dict(_SPECIAL[path])
    elif path in LIMITS:
        lo, hi = LIMITS[path]
        integer = kind is int
        schema = {"type": "integer" if integer else "number",
                  "minimum": int(lo) if integer else lo, "maximum": int(hi) if integer else hi}
    elif kind is bool:
        schema = {"type": "boolean"}
    elif kind is str:
        schema = dict(_TEXT)
    else:
        # A new field needs its range in LIMITS or its shape in _SPECIAL: the schema test fails until then.
        raise TypeError(f"no schema for config key {path} ({kind}): add it to lane.core.config.LIMITS or _SPECIAL")
    if default is not dataclasses.MISSING:
        schema["default"] = _json_default(default)
    return schema


def _section(
    cls: type, path: str, skip: tuple[str, ...] = (), nested: Mapping[str, dict[str, Any]] | None = None,
    defaults: bool = True,
) -> dict[str, Any]:
    """A closed object with one property per field of the dataclass *cls* (those in *skip* left out)."""
    hints = typing.get_type_hints(cls)
    instance = cls() if defaults else None
    properties: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        key = f"{path}.{f.name}"
        if nested and f.name in nested:
            properties[f.name] = nested[f.name]
            continue
        default = getattr(instance, f.name) if instance is not None else dataclasses.MISSING
        properties[f.name] = _knob(key, hints[f.name], default)
    return {"type": ["object", "null"], "properties": properties, "additionalProperties": False}


def _conditions(kinds: tuple[str, ...], name: dict[str, Any]) -> dict[str, Any]:
    """A list of ``{name, <one of kinds>}`` tests (`lane.core.rules.Condition`)."""
    values: dict[str, Any] = {
        "exact": {"type": "string"},
        "prefix": {"type": "string"},
        "regex": {"type": "string", "minLength": 1},
        "present": {"const": True},
        "absent": {"const": True},
    }
    return {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"name": name, **{k: values[k] for k in kinds}},
            "required": ["name"],
            "additionalProperties": False,
            "oneOf": [{"required": [k]} for k in kinds],
        },
    }


def _rule() -> dict[str, Any]:
    sources = ("header", "cookie", "query")
    percentage = {
        "type": "object",
        "properties": {
            "percent": _knob("coloring.percentage.percent", int, dataclasses.MISSING),
            "key": {
                "type": "object",
                "properties": {s: _TOKEN if s == "header" else _TEXT for s in sources},
                "additionalProperties": False,
                "oneOf": [{"required": [s]} for s in sources],
            },
            "salt": {"type": "string", "default": ""},
        },
        "required": ["percent"],
        "additionalProperties": False,
    }
    match = {
        "type": "object",
        "properties": {
            "headers": _conditions(MATCH_KINDS, _TOKEN),
            "cookies": _conditions(("exact", "regex", "present"), _TEXT),
            "query": _conditions(("exact", "regex", "present"), _TEXT),
        },
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"name": _TEXT, "lane": _LANE, "match": match, "percentage": percentage},
        "required": ["lane"],
        "additionalProperties": False,
        "anyOf": [{"required": ["match"]}, {"required": ["percentage"]}],
    }


def _service() -> dict[str, Any]:
    endpoint = {"type": "string", "pattern": r"^.+:[0-9]{1,5}$", "description": "host:port ([v6]:port)"}
    instances = {
        "type": ["object", "null"],
        "propertyNames": _LANE,
        "additionalProperties": {"type": ["array", "null"], "items": endpoint},
    }
    service = _section(Service, "services", skip=("name",), nested={"instances": instances}, defaults=False)
    service["properties"]["port"]["default"] = 80
    service["properties"]["protocol"]["default"] = DEFAULT_PROTOCOL
    service["type"] = "object"
    service["anyOf"] = [{"required": ["instances"]}, {"required": ["selector"]}]
    return service


def config_schema() -> dict[str, Any]:
    """The JSON Schema of a lane config file, as a JSON-ready dict, described by examples/reference.yaml."""
    lane = _section(Lane, "lanes", skip=("name",), defaults=False)
    lane["properties"]["strict"]["default"] = Lane("x", None).strict
    gateway = {**_section(MeshGatewaySpec, "mesh.gateway"), "type": "object"}
    schema = {
        "$schema": _DIALECT,
        "title": "lane config",
        "description": "Traffic lanes from one file; every key is explained in examples/reference.yaml.",
        "type": "object",
        "properties": {
            "tag": _section(TagSpec, "tag"),
            "label_key": {"type": "string", "pattern": f"^(?:{LABEL_KEY.pattern})$",
                          "default": "version"},
            "lanes": {"type": ["object", "null"], "propertyNames": _LANE, "additionalProperties": lane},
            "entry": _LANE,
            "coloring": {"type": ["array", "null"], "items": _rule()},
            "services": {"type": "object", "minProperties": 1, "propertyNames": _LANE,
                         "additionalProperties": _service()},
            "proxy": _section(ProxySpec, "proxy"),
            "mesh": _section(MeshSpec, "mesh", nested={"gateway": gateway}),
        },
        "required": ["entry", "services"],
        "additionalProperties": False,
    }
    reference = resources.files("lane").joinpath("examples/reference.yaml").read_text(encoding="utf-8")
    tree: dict[str, Any] = json.loads(json.dumps(schema))  # no piece (_LANE, _TOKEN) shared by two keys
    _with_descriptions(tree, _described(reference))
    return tree


def schema_text() -> str:
    """The schema as the JSON text `lane schema` prints and ``docs/lane-config.schema.json`` holds."""
    return json.dumps(config_schema(), indent=2) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``lane schema`` takes no options: redirect it to a file (``docs/lane-config.schema.json`` is one)."""


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(schema_text())
    return 0
