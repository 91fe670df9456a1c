"""The RBAC lane ships for `lane mesh sync`, evaluated the way the API server's RBAC authorizer does.

A ServiceAccount may do what a Role allows when a RoleBinding in the Role's namespace binds it to
that account; a rule allows a request when its apiGroups, resources and verbs each contain the
request's (or ``*``). The fake API server (`fake_kube.FakeKube.access`) records what each request
is authorized as, so the apply/sync tests can check every one of them against these Roles.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import yaml

from tests.support.fake_kube import Access, FakeKube

__all__ = ["SYNC_ACCOUNT", "SYNC_RBAC", "assert_sync_may", "granted", "load", "permits"]

JSON = dict[str, Any]
SYNC_RBAC: Final = Path(__file__).resolve().parents[2] / "docker" / "k8s" / "overlays" / "mesh-sync" / "rbac.yaml"
SYNC_ACCOUNT: Final = ("lane-demo", "lane-mesh-sync")  # (namespace, name) of its ServiceAccount


def load(path: Path = SYNC_RBAC) -> list[JSON]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _bound_rules(objects: Iterable[JSON], account: tuple[str, str]) -> list[tuple[str, JSON]]:
    """(namespace, rule) for every Role rule bound to *account*."""
    objects = list(objects)
    roles = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects if o["kind"] == "Role"}
    out = []
    for binding in (o for o in objects if o["kind"] == "RoleBinding"):
        ns = binding["metadata"]["namespace"]
        subjects = {(s.get("namespace", ns), s["name"]) for s in binding["subjects"] if s["kind"] == "ServiceAccount"}
        if account not in subjects:
            continue
        ref = binding["roleRef"]
        assert ref["kind"] == "Role", f"RoleBinding {ns}/{binding['metadata']['name']}: only Roles are expected"
        role = roles.get((ns, ref["name"]))
        assert role is not None, f"RoleBinding {ns}/{binding['metadata']['name']} names a missing Role {ref['name']}"
        out += [(ns, rule) for rule in role.get("rules") or []]
    return out


def _has(values: list[str], value: str) -> bool:
    return "*" in values or value in values


def permits(objects: Iterable[JSON], account: tuple[str, str], access: Access) -> bool:
    return any(ns == access.namespace and _has(rule.get("apiGroups") or [], access.group)
               and _has(rule.get("resources") or [], access.resource) and _has(rule.get("verbs") or [], access.verb)
               for ns, rule in _bound_rules(objects, account))


def granted(objects: Iterable[JSON], account: tuple[str, str]) -> set[Access]:
    """Every (namespace, group, resource, verb) the Roles spell out for *account* (wildcards as ``*``)."""
    return {Access(ns, group, resource, verb) for ns, rule in _bound_rules(objects, account)
            for group in rule.get("apiGroups") or [] for resource in rule.get("resources") or []
            for verb in rule.get("verbs") or []}


def assert_sync_may(fake: FakeKube) -> None:
    """Fail unless the shipped Roles allow every request *fake* has seen (run at fixture teardown)."""
    objects = load()
    denied = sorted(a for a in fake.access() if not permits(objects, SYNC_ACCOUNT, a))
    assert not denied, f"{SYNC_RBAC.relative_to(SYNC_RBAC.parents[4])} does not allow: {denied}"
