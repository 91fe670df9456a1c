"""`mesh_config.yaml_dump.dump_yaml` writes exactly what PyYAML's SafeDumper writes, on every path.

The reference here is plain PyYAML (pure-Python ``SafeDumper`` with the literal-block string
style), independent of the module under test: the fast event path and the fallback must both
give its bytes, for rendered configs and for data the fast path does not take.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lane.core.config_load import demo_config_text, parse_config
from mesh_config import yaml_dump
from mesh_config.render import dump_yaml, render_objects
from tests.support.mesh_vectors import CHAIN_CONFIG


def _scale_config(services: int) -> str:
    """The config of bench/render_scale.py (fallback chains, lanes missing here and there)."""
    spec = importlib.util.spec_from_file_location(
        "bench_render_scale", Path(__file__).resolve().parents[2] / "bench" / "render_scale.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up there
    spec.loader.exec_module(module)
    return str(module.config_text(services))


class _Reference(yaml.SafeDumper):  # type: ignore[misc]
    pass


_Reference.add_representer(
    str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|" if "\n" in v else None)
)


def reference(objects: list[dict[str, Any]]) -> str:
    return str(yaml.dump_all([dict(o) for o in objects], Dumper=_Reference, sort_keys=True, default_flow_style=False,
                             allow_unicode=False, width=4096, explicit_start=True))


@pytest.mark.parametrize("text", [demo_config_text(), CHAIN_CONFIG, _scale_config(40)], ids=["demo", "chain", "scale-40"])
def test_rendered_objects_dump_like_safe_dumper(text: str) -> None:
    objects = render_objects(parse_config(text))
    assert dump_yaml(objects) == reference(objects)
    assert [dump_yaml([o]) for o in objects] == [reference([o]) for o in objects]  # one file per object


def test_scalars_that_look_like_other_types_are_quoted_as_safe_dumper_does() -> None:
    data = {"s": ["true", "no", "1", "0x1f", "1.5", "null", "~", "", " lead", "a: b", "#x", "é", "line\nnext\n"],
            "n": [0, -3, 10**20, True, False, 1], "k": {"2": 1, "10": 2, "true": 1, "": 0},
            "empty": {"list": [], "map": {}, "items": [{}, [], ""]},
            "blocks": {"in a list": ["one\ntwo", " leading space\n", "kept\n\n\n"],
                       "in a map": {"deep": [{"lua": "a\n\n  indented\nb", "n": 1}]}}}
    assert dump_yaml([data]) == reference([data])


@pytest.mark.parametrize("data", [
    {"shared": (shared := {"a": 1}), "again": shared},  # an anchor and an alias
    {"float": 1.5, "none": None, "tuple": ("a", "b")},  # types only SafeDumper knows how to write
    {"mixed": {1: "int key", "s": "str key"}},  # keys that do not sort: insertion order
    {"nested": [["a", "b"], ["c"]]},  # a list in a list
    {"long": "word " * 1000},  # a line PyYAML folds at the width
    {"k" * 200: "a key longer than 128 characters is a complex key"},
    {"trailing": "spaces \nthen a break\n"},  # not a literal block: double-quoted
    {},  # an empty document
], ids=["alias", "other-types", "unsortable-keys", "list-in-list", "fold-width", "complex-key", "not-literal", "empty"])
def test_data_off_the_fast_path_still_dumps_like_safe_dumper(data: dict[str, Any]) -> None:
    assert dump_yaml([data]) == reference([data])


def test_the_fast_path_is_taken_for_rendered_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    """The speed claim rests on it: rendered objects never fall back to PyYAML's dumper."""
    def no_fallback(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("fell back to yaml.dump_all")

    monkeypatch.setattr(yaml_dump, "_dump_with_pyyaml", no_fallback)
    assert dump_yaml(render_objects(parse_config(demo_config_text()))).startswith("---\n")
