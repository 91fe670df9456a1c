"""A config file's YAML read into plain Python data: strict, bounded, and never a crash.

PyYAML's safe loaders accept what a config must not hold and crash, with something other than a
`yaml.YAMLError`, on text a user can type by mistake; `lane check` then printed a traceback and a
reload answered 500. Here each of those is a `yaml.MarkedYAMLError` naming the line and column,
which `lane.core.config` turns into its one-line `ConfigError`:

* a duplicate key (PyYAML silently keeps the last one);
* a mapping or list used as a key (``{a: 1}: x``; PyYAML's unique-key check raised ``TypeError``);
* nesting deeper than `MAX_DEPTH` (PyYAML's constructor and pure-Python composer recurse, so a few
  hundred levels raised ``RecursionError``; a lane config needs about six);
* an integer of more than 64 bits (more than 4,300 decimal digits raised ``ValueError``, Python's
  guard against quadratic int parsing; none of the config's numbers comes close), and a scalar
  that looks like an int, float or date but is not one (``2024-13-45``: ``ValueError``).

libyaml's parser (the PyYAML wheels ship it) reads a 1,000-service config 4x faster, which is most
of what `lane mesh render` spends; its errors carry no snippet of the offending line, so a file it
rejects is read again by the pure-Python loader, whose marks are the ones users see: `explain`
puts the line, the column, the problem and the text of that line on one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

__all__ = ["MAX_DEPTH", "explain", "load_yaml"]

MAX_DEPTH: Final = 64  # nested mappings and lists
_MAX_INT_BITS: Final = 64
# What PyYAML's constructors raise on text they did not expect (its own refusals are YAMLErrors).
_CRASHES: Final = (ArithmeticError, AttributeError, LookupError, RecursionError, TypeError, ValueError)


def _construct_unique_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise ConstructorError("while constructing a mapping", node.start_mark,
                                   "found a mapping or list as a key; keys must be plain values", key_node.start_mark)
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConstructorError(
                "while constructing a mapping", node.start_mark, f"found duplicate key {repr(key)[:60]}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


Construct = Callable[[Any, yaml.Node], Any]


def _checked(construct: Construct) -> Construct:
    """*construct* (a scalar's constructor) with whatever it raises as a marked YAML error."""

    def checked(loader: Any, node: yaml.Node) -> Any:
        try:
            value = construct(loader, node)
        except _CRASHES as exc:  # PyYAML's scalar constructors trust the resolver, which an explicit tag bypasses
            kind = node.tag.rsplit(":", 1)[-1]
            if kind == "int" and isinstance(exc, ValueError) and len(str(node.value)) > 20:
                raise _too_large(node) from None  # Python's limit on decimal digits
            raise ConstructorError(None, None, f"cannot read {str(node.value)[:40]!r} as {kind}: {exc}",
                                   node.start_mark) from None
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > _MAX_INT_BITS:
            raise _too_large(node)
        return value

    return checked


def _too_large(node: yaml.Node) -> ConstructorError:
    return ConstructorError(None, None, f"an integer of {len(str(node.value))} characters is too large for any "
                            "config value (quote it if it is text)", node.start_mark)


def _strict(loader: Any) -> None:
    loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)
    for kind in ("int", "float", "timestamp", "binary"):
        tag = f"tag:yaml.org,2002:{kind}"
        loader.add_constructor(tag, _checked(yaml.SafeLoader.yaml_constructors[tag]))


class _StrictLoader(yaml.SafeLoader):  # type: ignore[misc]
    """The pure-Python safe loader, strict, its composer refusing nesting deeper than `MAX_DEPTH`."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.ScalarEvent, yaml.AliasEvent):  # only mappings and lists nest
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_strict(_StrictLoader)
_FastLoader: Any = _StrictLoader
if hasattr(yaml, "CSafeLoader"):

    class _CStrictLoader(yaml.CSafeLoader):  # type: ignore[misc]
        """`_StrictLoader` on libyaml's parser (its composer is C: the depth is checked on the node tree)."""

    _strict(_CStrictLoader)
    _FastLoader = _CStrictLoader


_SCALAR_TAGS: Final = frozenset(f"tag:yaml.org,2002:{kind}" for kind in (
    "str", "int", "float", "bool", "null", "timestamp", "binary"))
_MAP_TAG: Final = "tag:yaml.org,2002:map"
_SEQ_TAG: Final = "tag:yaml.org,2002:seq"


def _check_nodes(root: yaml.Node) -> None:
    """Refuse a node tree deeper than `MAX_DEPTH`, or a tag that does not fit its node, without recursing.

    PyYAML's constructors trust that a tag fits its node: ``!!set`` or ``!!seq`` on a key made an
    unhashable one, ``!!map`` on a scalar raised ValueError. A config needs no tag but the plain
    ones, so a mapping must be a map, a list a seq, and a scalar one of `_SCALAR_TAGS`. Aliases may
    share nodes or loop: a node is looked at again only when reached deeper than before.
    """
    if isinstance(root, yaml.ScalarNode):
        _check_scalar(root)
        return
    deepest: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    scalar = yaml.ScalarNode
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", node.start_mark)
        if deepest.get(id(node), 0) >= depth:
            continue
        deepest[id(node)] = depth
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP_TAG:
                raise _misfit(node)
            children = [child for pair in node.value for child in pair]
        else:
            if node.tag != _SEQ_TAG:
                raise _misfit(node)
            children = node.value
        for child in children:
            if child.__class__ is scalar:  # most nodes: checked here, never stacked
                if child.tag not in _SCALAR_TAGS:
                    raise _misfit(child)
            else:
                stack.append((child, depth + 1))


def _check_scalar(node: yaml.Node) -> None:
    if node.tag not in _SCALAR_TAGS:
        raise _misfit(node)


def _misfit(node: yaml.Node) -> ConstructorError:
    return ConstructorError(None, None, f"the tag {node.tag!r} does not fit a {node.id}; a config needs no tags "
                            "but the plain ones", node.start_mark)


def _load_with(loader_class: Any, text: str) -> Any:
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node)
        try:
            return loader.construct_document(node)
        except _CRASHES as exc:  # a constructor crash this module did not foresee: still the user's text
            raise ConstructorError(None, None, f"cannot read this document ({type(exc).__name__}: {exc})"[:200],
                                   node.start_mark) from None
    finally:
        loader.dispose()


def load_yaml(text: str) -> Any:
    """The one document in *text* as plain data; anything refused raises a `yaml.YAMLError`."""
    try:
        return _load_with(_FastLoader, text)
    except yaml.YAMLError:
        if _FastLoader is _StrictLoader:
            raise
    return _load_with(_StrictLoader, text)  # raises again, with the pure-Python parser's marks


def explain(exc: yaml.YAMLError, text: str) -> tuple[str, str]:
    """Where *exc* found the problem in *text* (``line 3, column 5``, or ``""``) and what, one line each."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return "", " ".join(str(exc).split())
    mark = exc.problem_mark
    problem = exc.problem or "invalid"
    if exc.context:
        at = f" at line {exc.context_mark.line + 1}" if exc.context_mark is not None else ""
        problem += f" ({exc.context}{at})"
    lines = text.splitlines()
    near = lines[mark.line].strip() if 0 <= mark.line < len(lines) else ""
    if near:
        problem += f"; the line reads {near[:60]!r}" + ("..." if len(near) > 60 else "")
    return f"line {mark.line + 1}, column {mark.column + 1}", " ".join(problem.split())
