"""Deterministic YAML of rendered objects, fast enough for a mesh of 1,000 services.

`dump_yaml` writes what ``yaml.dump_all(..., Dumper=SafeDumper, sort_keys=True,
default_flow_style=False, width=4096, explicit_start=True)`` writes, with multi-line strings (the
Lua) as literal blocks -- byte for byte; `tests/mesh_config/test_mesh_yaml_dump.py` compares both.

Why not just call PyYAML: for 1,000 services x 5 lanes (2,004 objects, 1.4 MB, ~175k nodes) the
pure-Python emitter took ~3.5 s, and libyaml's (``CSafeDumper``) still ~0.85 s, as PyYAML's
representer and serializer call back into Python several times per node; feeding libyaml one
event per node ourselves still cost ~0.35 s, the price of turning each event into a C struct.

The objects `render_objects` makes are plain block-style YAML: dicts of str keys, lists, strings,
ints and bools. Their *layout* is simple and fixed (two-space indent, sequences in mappings not
indented, ``- `` carrying the first key of a mapping item, ``{}``/``[]`` for empty ones), while
the hard part -- how each scalar must be written (plain, quoted, escaped, literal block) -- is
left to PyYAML's own dumper, once per distinct scalar (hosts, lane names and keys repeat
thousands of times). That about halves it again (0.35 s -> 0.19 s; ~1,000 distinct scalars).

Anything outside that shape -- another type, a dict or list met twice in one document (SafeDumper
writes an anchor and alias), keys that do not sort, a list directly in a list, a scalar whose
line could reach the fold width, a multi-line string PyYAML would not write as a literal block --
takes PyYAML's own path with the same options, so the output never depends on the path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import yaml

__all__ = ["dump_yaml"]

_STR: Final = "tag:yaml.org,2002:str"
_WIDTH: Final = 4096
_OPTIONS: Final[dict[str, Any]] = {
    "sort_keys": True, "default_flow_style": False, "allow_unicode": False, "width": _WIDTH, "explicit_start": True,
}
_INDENT: Final = "  "
_SCALAR_TYPES: Final = frozenset({str, int, bool})


class _Dumper(yaml.SafeDumper):  # type: ignore[misc]
    """SafeDumper that writes multi-line strings (the Lua) as literal blocks, readable in review."""


class _FastDumper(getattr(yaml, "CSafeDumper", _Dumper)):  # type: ignore[misc]
    """The same on libyaml's emitter, for the values: it writes every value as SafeDumper does (a
    fuzz of 20,000 strings agreed), but an empty key as ``'':`` where SafeDumper writes ``? ''``."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar(_STR, value, style="|")
    return dumper.represent_scalar(_STR, value)


_Dumper.add_representer(str, _str_representer)
_FastDumper.add_representer(str, _str_representer)


class _NotPlain(Exception):
    """The data needs PyYAML's general path (see the module docstring)."""


def _pyyaml(documents: list[Any], dumper: type = _Dumper) -> str:
    text: str = yaml.dump_all(documents, Dumper=dumper, **_OPTIONS)
    return text


# (type, value) -> how PyYAML writes it as a mapping value: one line, or a literal block's header and
# its lines (indented relative to the enclosing mapping, empty lines empty). The type is part of the
# key because True == 1. Shared by every dump (`write_objects` dumps one object per file) and bounded.
_Rendered = str | tuple[str, tuple[str, ...]]
_VALUES: Final[dict[tuple[type, Any], _Rendered]] = {}
_KEYS: Final[dict[tuple[type, Any], str]] = {}
_CACHE_LIMIT: Final = 1 << 16


def _render_value(cls: type, value: Any) -> _Rendered:
    text = _pyyaml([{"k": value}], _FastDumper)
    assert text.startswith("---\nk: ")
    first, *rest = text[len("---\nk: "):].rstrip("\n").split("\n")
    if not rest:
        rendered: _Rendered = first
    elif first.startswith("|") and all(line.startswith(_INDENT) or not line for line in rest):
        rendered = (first, tuple(line[len(_INDENT):] for line in rest))
    else:
        raise _NotPlain("a multi-line scalar that is not a literal block")
    if len(_VALUES) >= _CACHE_LIMIT:
        _VALUES.clear()
    _VALUES[cls, value] = rendered
    return rendered


def _render_key(cls: type, key: Any) -> str:
    text = _pyyaml([{key: 0}])  # SafeDumper's own: keys are few
    if not (text.startswith("---\n") and text.endswith(": 0\n")) or text.count("\n") != 2:
        raise _NotPlain("a key PyYAML writes as a complex key")
    if len(_KEYS) >= _CACHE_LIMIT:
        _KEYS.clear()
    rendered = _KEYS[cls, key] = text[len("---\n"):-len(": 0\n")]
    return rendered


class _TextWriter:
    """Writes plain documents as block-style YAML lines into *out*."""

    def __init__(self, out: list[str]) -> None:
        self._out = out
        self._seen: set[int] = set()  # ids of the containers of the current document

    def document(self, data: Any) -> None:
        if type(data) is not dict or not data:
            raise _NotPlain("a document that is not a non-empty mapping")
        self._seen.clear()
        self._out.append("---\n")
        self._mapping(data, "")

    def _container(self, data: Any) -> None:
        seen = self._seen
        size = len(seen)
        seen.add(id(data))
        if len(seen) == size:
            raise _NotPlain("alias")

    def _mapping(self, data: dict[Any, Any], indent: str) -> None:
        self._container(data)
        try:
            items = sorted(data.items())
        except TypeError:
            raise _NotPlain("unsortable keys") from None
        out, keys = self._out, _KEYS
        for key, value in items:
            kcls = type(key)
            if kcls not in _SCALAR_TYPES:
                raise _NotPlain(kcls.__name__)
            head = indent + (keys.get((kcls, key)) or _render_key(kcls, key)) + ":"
            cls = type(value)
            if cls is dict:
                if value:
                    out.append(head + "\n")
                    self._mapping(value, indent + _INDENT)
                else:
                    out.append(head + " {}\n")
            elif cls is list:
                if value:
                    out.append(head + "\n")
                    self._sequence(value, indent)  # sequences in a mapping are not indented
                else:
                    out.append(head + " []\n")
            else:
                self._scalar(head, cls, value, indent)

    def _sequence(self, data: list[Any], indent: str) -> None:
        self._container(data)
        out = self._out
        item_indent = indent + _INDENT
        for value in data:
            cls = type(value)
            if cls is dict:
                if value:
                    start = len(out)
                    self._mapping(value, item_indent)
                    out[start] = indent + "- " + out[start][len(item_indent):]  # "- " carries the first key
                else:
                    out.append(indent + "- {}\n")
            elif cls is list:
                raise _NotPlain("a list in a list")
            else:
                self._scalar(indent + "-", cls, value, indent)

    def _scalar(self, head: str, cls: type, value: Any, indent: str) -> None:
        if cls not in _SCALAR_TYPES:
            raise _NotPlain(cls.__name__)
        rendered = _VALUES.get((cls, value)) or _render_value(cls, value)
        if isinstance(rendered, str):
            line = f"{head} {rendered}\n"
            if len(line) > _WIDTH:  # PyYAML may fold it where the column passes the width
                raise _NotPlain("a line near the fold width")
            self._out.append(line)
            return
        header, lines = rendered
        block = indent + _INDENT
        self._out.append(f"{head} {header}\n")
        self._out.extend(f"{block}{line}\n" if line else "\n" for line in lines)


def dump_yaml(objects: Iterable[Mapping[str, Any]]) -> str:
    """Deterministic multi-document YAML of *objects* (keys sorted, Lua as literal blocks)."""
    documents = [dict(o) for o in objects]
    out: list[str] = []
    writer = _TextWriter(out)
    try:
        for document in documents:
            writer.document(document)
    except _NotPlain:
        return _dump_with_pyyaml(documents)
    return "".join(out)


def _dump_with_pyyaml(documents: list[Any]) -> str:
    """The general path, for data outside the plain shape."""
    return _pyyaml(documents)
