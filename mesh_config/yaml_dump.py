"""Deterministic YAML of rendered objects, fast enough for a mesh of 1,000 services.

`dump_yaml` writes what ``yaml.dump_all(..., Dumper=SafeDumper, sort_keys=True,
default_flow_style=False, width=4096, explicit_start=True)`` writes, with multi-line strings (the
Lua) as literal blocks -- byte for byte; `tests/test_mesh_render.py` compares both.

Why not just call PyYAML: for 1,000 services x 5 lanes (2,004 objects, 1.4 MB) the pure-Python
emitter took ~3.5 s, and even with libyaml's emitter (``CSafeDumper``) PyYAML's representer and
serializer call back into Python several times per node (~0.85 s). The objects `render_objects`
makes are plain dicts, lists, strings, ints and bools, so this module walks them itself and
feeds libyaml the events directly: one event per node, and one cached event per distinct scalar
(hosts, lane names and keys repeat thousands of times) -- about half that time again.

Anything outside that plain shape (another type, a dict or list met twice in one document, which
SafeDumper writes as an anchor and alias, keys that do not sort) and a PyYAML built without
libyaml take PyYAML's own path with the same options, so the output never depends on the path.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from typing import Any, Final

import yaml
from yaml.events import (
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)

__all__ = ["dump_yaml"]

_STR: Final = "tag:yaml.org,2002:str"
_MAP: Final = "tag:yaml.org,2002:map"
_SEQ: Final = "tag:yaml.org,2002:seq"
_SCALAR_TYPES: Final = frozenset({str, int, bool})
_OPTIONS: Final[dict[str, Any]] = {
    "sort_keys": True, "default_flow_style": False, "allow_unicode": False, "width": 4096, "explicit_start": True,
}
# libyaml's emitter where PyYAML was built with it (the PyPI wheels are); else the Python one.
_CDumper: Final[Any] = getattr(yaml, "CSafeDumper", None)


# (type, value) -> its ScalarEvent: shared by every dump (`write_objects` dumps one object per file)
# and bounded. Events are only read by the emitter, and how a scalar resolves depends only on
# PyYAML's resolver tables, so reusing them is safe.
_SCALAR_EVENTS: Final[dict[tuple[type, Any], ScalarEvent]] = {}
_SCALAR_EVENTS_LIMIT: Final = 1 << 16


class _Dumper(_CDumper or yaml.SafeDumper):  # type: ignore[misc]
    """SafeDumper that writes multi-line strings (the Lua) as literal blocks, readable in review."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar(_STR, value, style="|")
    return dumper.represent_scalar(_STR, value)


_Dumper.add_representer(str, _str_representer)


class _NotPlain(Exception):
    """The data needs PyYAML's general path (see the module docstring)."""


class _EventWriter:
    """Emits plain data as libyaml events, exactly as SafeDumper's serializer would."""

    def __init__(self, dumper: Any) -> None:
        self._dumper = dumper
        self._emit = dumper.emit
        self._scalars = _SCALAR_EVENTS
        self._seen: set[int] = set()  # ids of the containers of the current document
        self._map_start = MappingStartEvent(None, _MAP, True, flow_style=False)
        self._seq_start = SequenceStartEvent(None, _SEQ, True, flow_style=False)
        self._map_end, self._seq_end = MappingEndEvent(), SequenceEndEvent()

    def document(self, data: Any) -> None:
        self._seen.clear()
        self._emit(DocumentStartEvent(explicit=True))
        self._node(data)
        self._emit(DocumentEndEvent(explicit=False))

    def _scalar(self, cls: type, value: Any) -> ScalarEvent:
        """The event of a scalar, tagged and marked implicit the way SafeRepresenter + Serializer do."""
        if cls is str:
            tag, text, style = _STR, value, "|" if "\n" in value else None
        elif cls is bool:
            tag, text, style = "tag:yaml.org,2002:bool", "true" if value else "false", None
        else:
            tag, text, style = "tag:yaml.org,2002:int", str(value), None
        resolve = self._dumper.resolve
        implicit = (resolve(yaml.ScalarNode, text, (True, False)) == tag,
                    resolve(yaml.ScalarNode, text, (False, True)) == tag)
        if len(self._scalars) >= _SCALAR_EVENTS_LIMIT:
            self._scalars.clear()
        event = self._scalars[cls, value] = ScalarEvent(None, tag, implicit, text, style=style)
        return event

    def _node(self, data: Any) -> None:
        cls = type(data)
        if cls is dict or cls is list:
            if id(data) in self._seen:
                raise _NotPlain("alias")
            self._seen.add(id(data))
            if cls is dict:
                try:
                    items = sorted(data.items())
                except TypeError:
                    raise _NotPlain("unsortable keys") from None
                self._emit(self._map_start)
                for key, value in items:
                    self._node(key)
                    self._node(value)
                self._emit(self._map_end)
            else:
                self._emit(self._seq_start)
                for value in data:
                    self._node(value)
                self._emit(self._seq_end)
            return
        if cls not in _SCALAR_TYPES:
            raise _NotPlain(cls.__name__)
        event = self._scalars.get((cls, data))
        self._emit(event if event is not None else self._scalar(cls, data))


def _dump_events(documents: list[Any]) -> str:
    stream = io.StringIO()
    dumper = _CDumper(stream, **_OPTIONS)
    try:
        dumper.open()
        writer = _EventWriter(dumper)
        for document in documents:
            writer.document(document)
        dumper.close()
    finally:
        dumper.dispose()
    return stream.getvalue()


def dump_yaml(objects: Iterable[Mapping[str, Any]]) -> str:
    """Deterministic multi-document YAML of *objects* (keys sorted, Lua as literal blocks)."""
    documents = [dict(o) for o in objects]
    if _CDumper is not None:
        try:
            return _dump_events(documents)
        except _NotPlain:
            pass
    text: str = yaml.dump_all(documents, Dumper=_Dumper, **_OPTIONS)
    return text
