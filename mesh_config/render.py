"""The ordered Istio objects for a lane config, and their YAML.

Everything is built as typed data (`mesh_config.model`) and dumped once at the edge: the same
config and lanes always give byte-identical YAML, so a diff of two renders is a review of what
changes in the cluster. Every object carries ``app.kubernetes.io/managed-by: lane`` and
``lane.dev/config: <name>`` so stale objects can be found and pruned.

Order: the Gateway, then per service (sorted by name) its DestinationRule and VirtualService(s),
then the EnvoyFilters -- subsets exist before routes name them. Per-service objects live in the
service's namespace (`mesh_config.hosts`); the sidecar EnvoyFilters (baggage -> tag, instant
fallback) go into every namespace a service of the config lives in, i.e. wherever lane apps run,
rather than mesh-wide from the root namespace: sidecars of other apps are left alone.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import Any, Final

from lane.core.config import LaneConfig

from .destination_rule import destination_rule
from .envoy_filter import gateway_filter, sidecar_filter
from .fallback import fallback_filters, fallbacks_by_service
from .gateway import gateway
from .hosts import service_namespace
from .lanes import Presence, present_lanes
from .model import CONFIG_LABEL, MANAGED_BY_LABEL, Resource, to_data
from .virtual_service import virtual_services
from .yaml_dump import dump_yaml

__all__ = [
    "MANAGED_BY",
    "config_name",
    "dump_yaml",
    "object_file_name",
    "render_objects",
    "render_resources",
    "write_objects",
]

MANAGED_BY: Final = "lane"
_NOT_LABEL = re.compile(r"[^a-z0-9.-]+")


def config_name(config: LaneConfig) -> str:
    """A label value naming the config: its file name without extension (``demo`` for demo.yaml)."""
    stem = PurePath(config.source.strip("<>").split()[-1] if config.source.strip("<>") else "config").stem
    name = _NOT_LABEL.sub("-", stem.lower()).strip("-.")[:63].strip("-.")
    return name or "config"


def render_resources(
    config: LaneConfig, *, lanes: Mapping[str, frozenset[str]] | None = None, namespace: str | None = None
) -> list[Resource]:
    """The typed objects, in apply order; see `render_objects`."""
    ns = namespace or config.mesh.namespace
    labels = MappingProxyType({MANAGED_BY_LABEL: MANAGED_BY, CONFIG_LABEL: config_name(config)})
    present: Presence = present_lanes(config, lanes)
    falls = fallbacks_by_service(config, present, ns)
    out = [gateway(config, ns, labels)]
    for service in sorted(config.services):
        out.append(destination_rule(config, service, present, ns, labels, falls[service]))
        out.extend(virtual_services(config, service, present, ns, labels, falls[service]))
    out.append(gateway_filter(config, labels))
    if config.mesh.baggage_to_header:
        out.extend(sidecar_filter(config, home, labels)
                   for home in sorted({service_namespace(svc, ns) for svc in config.services.values()}))
    out.extend(fallback_filters(config, present, ns, labels, falls))
    return out


def render_objects(
    config: LaneConfig, *, lanes: Mapping[str, frozenset[str]] | None = None, namespace: str | None = None
) -> list[dict[str, Any]]:
    """The ordered objects as plain dicts, ready for YAML or the Kubernetes API.

    *lanes* says which lanes each service has right now (e.g. the lanes with ready pods); services
    it does not mention keep the config's lanes. *namespace* overrides ``mesh.namespace``: the
    Gateway's namespace and that of every service with a short host (a ``name.NS.svc...`` host
    keeps its NS; the gateway EnvoyFilters live in ``mesh.gateway.namespace``). A regex the
    gateway cannot mirror raises `lane.core.errors.ConfigError` naming the rule.
    """
    return [to_data(r) for r in render_resources(config, lanes=lanes, namespace=namespace)]


def object_file_name(obj: Mapping[str, Any], index: int) -> str:
    """``03-virtualservice-b.yaml``: apply order first, then what the file holds."""
    meta = obj.get("metadata") or {}
    return f"{index:02d}-{str(obj.get('kind', 'object')).lower()}-{meta.get('name', 'unnamed')}.yaml"


def write_objects(objects: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write one file per object into *out_dir* (created if missing); returns the paths.

    Callers render everything first, so a config error leaves *out_dir* untouched. The files are
    written into a temporary directory beside *out_dir* first and then renamed into place, so a
    write that fails (disk full, no permission) leaves no half-written set of manifests behind for
    a ``kubectl apply -f`` to pick up; the `OSError` is raised to the caller.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", str(out_dir))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.{os.getpid()}.{secrets.token_hex(4)}"
    staging.mkdir()  # not mkdtemp: the directory keeps the mode (umask) a plain mkdir would give it
    try:
        names = []
        for i, obj in enumerate(objects):
            names.append(object_file_name(obj, i))
            (staging / names[-1]).write_text(dump_yaml([obj]), encoding="utf-8")
        if not out_dir.exists():
            staging.rename(out_dir)
        else:
            for name in names:
                os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out_dir / name for name in names]
