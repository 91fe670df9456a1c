"""Validate emitted objects against the CRDs a cluster actually serves, before anything is applied.

Input is what ``kubectl get crd -o yaml`` prints (a ``List``) or a multi-document CRD bundle such
as Istio's ``customresourcedefinitions.gen.yaml``. Each object is checked against the
``openAPIV3Schema`` of its group, kind and *served* version, the way the API server does with
strict field validation: a field the schema does not declare is an error (unless the schema
says ``x-kubernetes-preserve-unknown-fields``, as EnvoyFilter patch values do). ``metadata`` is
checked against the parts of ObjectMeta lane writes (name, namespace, labels, annotations).

Not evaluated: ``x-kubernetes-validations`` (CEL) rules -- jsonschema has no CEL; they are counted
so the report says how many were skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from jsonschema import Draft4Validator

from lane.core.errors import LaneError

__all__ = ["CrdIndex", "SchemaError", "load_crds", "parse_crds", "validate_objects"]

_DNS_SUBDOMAIN: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_LABEL_VALUE: Final = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
_LABEL_KEY: Final = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"

_OBJECT_META: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 253},
        "namespace": {"type": "string", "maxLength": 63, "pattern": _DNS_LABEL},
        "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63,
                                                               "pattern": _LABEL_VALUE}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


class SchemaError(LaneError):
    """The CRD file cannot be used (unreadable, not CRDs); the message says which file and why."""


@dataclass(frozen=True, slots=True)
class _Served:
    schema: Mapping[str, Any]
    cel_rules: int


@dataclass(frozen=True, slots=True)
class CrdIndex:
    """Served schemas by (group, version, kind), and which versions each (group, kind) serves."""

    schemas: Mapping[tuple[str, str, str], _Served]
    versions: Mapping[tuple[str, str], tuple[str, ...]]
    source: str


def _strict(schema: Any) -> tuple[Any, int]:
    """A JSON Schema (draft 4) equivalent of a structural schema under strict field validation."""
    if isinstance(schema, list):
        parts = [_strict(s) for s in schema]
        return [p for p, _ in parts], sum(n for _, n in parts)
    if not isinstance(schema, dict):
        return schema, 0
    cel = len(schema.get("x-kubernetes-validations") or [])
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("description", "example", "format"):
            continue
        if key in ("properties", "patternProperties", "definitions"):
            converted = {name: _strict(sub) for name, sub in value.items()}
            out[key] = {name: c for name, (c, _) in converted.items()}
            cel += sum(n for _, n in converted.values())
        else:
            out[key], n = _strict(value)
            cel += n
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    if out.get("type") == "object" and not preserve and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if schema.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    out.pop("nullable", None)
    return out, cel


def parse_crds(text: str, source: str = "<crds>") -> CrdIndex:
    """Index the CRDs in *text* (a kubectl ``List`` or CRD documents)."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise SchemaError(f"{source}: not valid YAML: {exc}") from None
    items: list[Any] = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "List":
            items.extend(doc.get("items") or [])
        else:
            items.append(doc)
    schemas: dict[tuple[str, str, str], _Served] = {}
    versions: dict[tuple[str, str], list[str]] = {}
    for item in items:
        if not isinstance(item, dict) or item.get("kind") != "CustomResourceDefinition":
            continue
        spec = item.get("spec") or {}
        group, kind = str(spec.get("group", "")), str((spec.get("names") or {}).get("kind", ""))
        for version in spec.get("versions") or []:
            if not version.get("served"):
                continue
            raw = ((version.get("schema") or {}).get("openAPIV3Schema")) or {"type": "object",
                                                                           "x-kubernetes-preserve-unknown-fields": True}
            strict, cel = _strict(raw)
            strict.setdefault("properties", {})
            strict["properties"].update({"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                         "metadata": _OBJECT_META})
            strict["required"] = sorted({*strict.get("required", []), "apiVersion", "kind", "metadata"})
            schemas[(group, str(version["name"]), kind)] = _Served(strict, cel)
            versions.setdefault((group, kind), []).append(str(version["name"]))
    if not schemas:
        raise SchemaError(f"{source}: no CustomResourceDefinition with a served version found")
    return CrdIndex(schemas, {k: tuple(v) for k, v in versions.items()}, source)


def load_crds(path: str | Path) -> CrdIndex:
    """Index the CRD file at *path* (e.g. the output of ``kubectl get crd -o yaml``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SchemaError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_crds(text, str(path))


def _where(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    return f"{obj.get('kind', '?')}/{meta.get('namespace', '-')}/{meta.get('name', '?')}"


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(object)"


def validate_object(index: CrdIndex, obj: Mapping[str, Any]) -> tuple[list[str], int]:
    """Problems with one object, and how many CEL rules its schema has that were not evaluated."""
    where = _where(obj)
    api_version, kind = str(obj.get("apiVersion", "")), str(obj.get("kind", ""))
    group, _, version = api_version.rpartition("/")
    served = index.schemas.get((group, version, kind))
    if served is None:
        known = index.versions.get((group, kind))
        why = f"served versions: {', '.join(known)}" if known else "no such CRD in " + index.source
        return [f"{where}: the cluster does not serve {kind} at {api_version} ({why})"], 0
    problems = []
    for error in sorted(Draft4Validator(served.schema).iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        problems.append(f"{where}: {_path(error.absolute_path)}: {error.message}")
    meta = obj.get("metadata") or {}
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if isinstance(name, str) and not _DNS_SUBDOMAIN.fullmatch(name):
        problems.append(f"{where}: metadata.name: {name!r} is not a DNS-1123 subdomain")
    labels = meta.get("labels") if isinstance(meta, Mapping) else None
    for key in (labels or {}):
        if not re.fullmatch(_LABEL_KEY, str(key)):
            problems.append(f"{where}: metadata.labels: {key!r} is not a valid label key")
    return problems, served.cel_rules


def validate_objects(index: CrdIndex, objects: Iterable[Mapping[str, Any]]) -> tuple[list[str], int]:
    """All problems of *objects* (empty: valid), and the number of CEL rules not evaluated."""
    problems: list[str] = []
    skipped = 0
    for obj in objects:
        if not isinstance(obj, Mapping):
            problems.append(f"not an object: {type(obj).__name__}")
            continue
        found, cel = validate_object(index, obj)
        problems += found
        skipped += cel
    return problems, skipped
