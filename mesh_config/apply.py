"""``lane mesh apply``: put the rendered lane objects into a cluster, and nothing stale beside them.

Each object goes in by server-side apply as field manager ``lane`` (``force``: lane owns the fields
it renders). To say — and do — only what changes, every object is first applied with the API's
``dryRun=All`` and the server's answer compared with the live object: identical means unchanged and
no write; otherwise the real apply follows and the summary shows a diff of the two. Objects
labelled ``app.kubernetes.io/managed-by: lane`` (and, when the renderer sets it, the same
``lane.dev/config`` name) that are no longer rendered are deleted (pruned) from every namespace the
render touches. ``--dry-run`` sends every write with ``dryRun=All``.
"""

from __future__ import annotations

import argparse
import copy
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

import yaml

from .kube import CONFIG_LABEL, MANAGED_BY, Kube, KubeError, Ref, add_connection_arguments
from .target import Target, add_target_arguments, kube_from_args, load_lane_config, run_on_cluster

__all__ = [
    "PRUNE_KINDS",
    "Action",
    "ApplyResult",
    "Change",
    "add_arguments",
    "apply_objects",
    "comparable",
    "kube_from_args",
    "load_lane_config",
    "run",
]

JSON = dict[str, Any]
# Kinds lane may have emitted before even if this render has none of them (e.g. the EnvoyFilter
# after `baggage_to_header: false`): listed for pruning; a kind the API does not serve lists empty.
PRUNE_KINDS: Final[tuple[tuple[str, str, str], ...]] = (
    ("networking.istio.io", "v1", "Gateway"),
    ("networking.istio.io", "v1", "VirtualService"),
    ("networking.istio.io", "v1", "DestinationRule"),
    ("networking.istio.io", "v1alpha3", "EnvoyFilter"),
)
_SERVER_METADATA: Final = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields",
                           "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds")


class Action(str, Enum):
    CREATE = "created"
    UPDATE = "configured"
    UNCHANGED = "unchanged"
    PRUNE = "pruned"


_MARK: Final = {Action.CREATE: "+", Action.UPDATE: "~", Action.UNCHANGED: "=", Action.PRUNE: "-"}


@dataclass(frozen=True, slots=True)
class Change:
    action: Action
    ref: Ref
    diff: tuple[str, ...] = ()  # unified diff live -> applied, for updates

    def lines(self) -> list[str]:
        return [f"{_MARK[self.action]} {self.ref} {self.action.value}", *(f"    {d}" for d in self.diff)]


@dataclass(frozen=True, slots=True)
class ApplyResult:
    changes: tuple[Change, ...]
    dry_run: bool

    @property
    def changed(self) -> bool:
        return any(c.action is not Action.UNCHANGED for c in self.changes)

    def count(self, action: Action) -> int:
        return sum(1 for c in self.changes if c.action is action)

    def summary(self) -> str:
        lines = [line for c in self.changes for line in c.lines()]
        counts = ", ".join(f"{self.count(a)} {a.value}" for a in Action)
        tail = " (dry run: the API checked every write, nothing was changed)" if self.dry_run else ""
        return "\n".join([*lines, f"{len(self.changes)} objects: {counts}{tail}"])


def comparable(obj: JSON) -> JSON:
    """*obj* without what the server maintains, so live and applied objects compare by content."""
    out = copy.deepcopy(obj)
    meta = out.get("metadata") or {}
    for key in _SERVER_METADATA:
        meta.pop(key, None)
    out.pop("status", None)
    return out


def _labelled(obj: JSON) -> JSON:
    """A copy carrying the managed-by label pruning relies on (the renderer sets it; make sure)."""
    out = copy.deepcopy(obj)
    labels = out.setdefault("metadata", {}).setdefault("labels", {})
    labels[MANAGED_BY[0]] = MANAGED_BY[1]
    return out


def _diff(live: JSON, applied: JSON) -> tuple[str, ...]:
    a = yaml.safe_dump(comparable(live), sort_keys=True).splitlines()
    b = yaml.safe_dump(comparable(applied), sort_keys=True).splitlines()
    return tuple(line.rstrip() for line in difflib.unified_diff(a, b, "live", "rendered", n=1, lineterm=""))


def apply_objects(kube: Kube, objects: Iterable[JSON], namespace: str, *, dry_run: bool = False,
                  prune: bool = True) -> ApplyResult:
    """Apply *objects* into *namespace*, prune stale lane objects; raises `KubeError` on API failure."""
    desired: dict[Ref, JSON] = {}
    for obj in objects:
        body = _labelled(obj)
        ref = Ref.of(body, namespace)
        body["metadata"]["namespace"] = ref.namespace
        if ref in desired:
            raise KubeError(f"rendered {ref} twice")
        desired[ref] = body
    changes: list[Change] = []
    for ref, body in desired.items():
        live = kube.get(ref)
        would = kube.apply(ref, body, dry_run=True)
        if live is not None and comparable(would) == comparable(live):
            changes.append(Change(Action.UNCHANGED, ref))
            continue
        if not dry_run:
            kube.apply(ref, body)
        if live is None:
            changes.append(Change(Action.CREATE, ref))
        else:
            changes.append(Change(Action.UPDATE, ref, _diff(live, would)))
    if prune:
        changes += _prune(kube, desired, namespace, dry_run)
    return ApplyResult(tuple(changes), dry_run)


def _prune_selector(desired: Mapping[Ref, JSON]) -> str:
    """managed-by=lane, narrowed to this config's objects when they all carry the config label."""
    terms = [f"{MANAGED_BY[0]}={MANAGED_BY[1]}"]
    names = {((body.get("metadata") or {}).get("labels") or {}).get(CONFIG_LABEL) for body in desired.values()}
    if len(names) == 1 and None not in names:
        terms.append(f"{CONFIG_LABEL}={names.pop()}")
    return ",".join(terms)


def _prune(kube: Kube, desired: Mapping[Ref, JSON], namespace: str, dry_run: bool) -> list[Change]:
    kinds = {(g, k): v for g, v, k in PRUNE_KINDS}
    kinds.update({(r.group, r.kind): r.version for r in desired})
    keep = {(r.group, r.kind, r.namespace, r.name) for r in desired}
    selector = _prune_selector(desired)
    pruned = []
    for ns in sorted({namespace, *(r.namespace for r in desired)}):
        for (group, kind), version in sorted(kinds.items()):
            for live in kube.list_objects(group, version, kind, ns, selector):
                ref = Ref.of(live, ns)
                if (ref.group, ref.kind, ref.namespace, ref.name) not in keep:
                    kube.delete(ref, dry_run=dry_run)
                    pruned.append(Change(Action.PRUNE, ref))
    return sorted(pruned, key=lambda c: c.ref)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser, "namespace to apply into (default: the config's mesh.namespace)")
    parser.add_argument("--dry-run", action="store_true", help="send every write with dryRun=All: show, change nothing")
    parser.add_argument("--from-cluster", action="store_true",
                        help="render only the lanes that have ready pods now (see `lane mesh sync`)")
    parser.add_argument("--no-prune", dest="prune", action="store_false",
                        help="keep lane-managed objects that are no longer rendered")
    add_connection_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return run_on_cluster(args, lambda target: _apply(target, args))


def _apply(target: Target, args: argparse.Namespace) -> int:
    from .render import render_objects  # the renderer is only needed once a config is in hand

    lanes = None
    if args.from_cluster:
        from .cluster import lanes_from_cluster

        lanes = lanes_from_cluster(target.config, target.namespace, kube=target.kube)
    objects = render_objects(target.config, lanes=lanes, namespace=target.namespace)
    result = apply_objects(target.kube, objects, target.namespace, dry_run=args.dry_run, prune=args.prune)
    print(result.summary())
    return 0
