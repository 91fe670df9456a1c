"""Which lanes each service really has right now, read from the labels of its ready pods.

The static config says which lanes a service *may* have; the cluster says which it *has*: a lane
exists for a service while at least one ready pod matches the service's ``selector`` and carries
the lane in the config's ``label_key`` label (``version: gray``). That is what `render
--from-cluster` and `lane mesh sync` feed to `render_objects(lanes=...)`, so a VirtualService never
sends a lane to a subset with nobody behind it, and what `render --check-endpoints` checks.

Rules, chosen so routes always have somewhere to go:
- a pod counts while it is Ready and not terminating (the endpoints controller's rule);
- the default lane is always present: every fallback chain ends there, so it must stay routable
  even while its pods restart;
- services without a ``selector`` keep the lanes the config lists (nothing to discover);
- label values that are not declared lanes are ignored (logged once per value).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from lane.core.config import LaneConfig, Service

from .hosts import service_namespace
from .kube import Kube, connect

__all__ = [
    "check_endpoints",
    "endpoint_problems",
    "lanes_from_cluster",
    "lanes_from_pods",
    "list_lane_pods",
    "pod_is_ready",
    "pod_matches",
    "pod_selector",
    "unchecked_services",
    "watched_namespaces",
]

log = logging.getLogger(__name__)
JSON = dict[str, Any]
_warned: set[str] = set()


def pod_selector(config: LaneConfig) -> str:
    """The label selector of every pod that can be a lane instance: those carrying the lane label."""
    return config.label_key


def pod_is_ready(pod: JSON) -> bool:
    """Ready condition True and not being deleted."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_matches(pod: JSON, selector: Mapping[str, str]) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _pod_lane(config: LaneConfig, pod: JSON) -> str | None:
    value = ((pod.get("metadata") or {}).get("labels") or {}).get(config.label_key)
    if value is None:
        return None
    if value not in config.lanes:
        if value not in _warned:
            _warned.add(value)
            log.warning("ignoring pods labelled %s=%s: not a lane of the config", config.label_key, value)
        return None
    return str(value)


def lanes_from_pods(config: LaneConfig, pods: Iterable[JSON],
                    namespace: str | None = None) -> Mapping[str, frozenset[str]]:
    """Service -> the lanes it has ready pods for (plus the default lane), for every configured service.

    With *namespace* (the render's), a pod counts only for services living in the pod's own
    namespace; without it, pods are matched by labels alone.
    """
    ready = [p for p in pods if pod_is_ready(p)]
    out: dict[str, frozenset[str]] = {}
    for svc in config.services.values():
        if not svc.selector:
            out[svc.name] = frozenset(svc.lanes)
            continue
        found = {lane for p in ready if _in_home(p, svc, namespace) and pod_matches(p, svc.selector)
                 and (lane := _pod_lane(config, p))}
        out[svc.name] = frozenset({config.default_lane, *found})
    return MappingProxyType(out)


def _in_home(pod: JSON, svc: Service, namespace: str | None) -> bool:
    if namespace is None:
        return True
    pod_ns = (pod.get("metadata") or {}).get("namespace")
    return pod_ns is None or pod_ns == service_namespace(svc, namespace)


def watched_namespaces(config: LaneConfig, namespace: str) -> tuple[str, ...]:
    """Every namespace a service of *config* lives in (`mesh_config.hosts`), *namespace* for short hosts."""
    return tuple(sorted({service_namespace(svc, namespace) for svc in config.services.values()}))


def list_lane_pods(kube: Kube, config: LaneConfig, namespace: str) -> list[JSON]:
    """The pods carrying the lane label in every namespace the config's services live in.

    A pod only counts for a service of its own namespace (`pod_matches` is told the namespace by
    the pod), so two services with the same selector in different namespaces stay apart.
    """
    pods: list[JSON] = []
    for ns in watched_namespaces(config, namespace):
        pods += kube.list_pods(ns, pod_selector(config))[0]
    return pods


def lanes_from_cluster(config: LaneConfig, namespace: str, *, kube: Kube | None = None) -> Mapping[str, frozenset[str]]:
    """`lanes_from_pods` over the pods of every namespace the config's services live in (connects
    with the default kubeconfig if no *kube*)."""
    kube = kube or Kube(connect())
    return lanes_from_pods(config, list_lane_pods(kube, config, namespace), namespace)


def check_endpoints(objects: Iterable[JSON], config: LaneConfig, namespace: str, *,
                    kube: Kube | None = None) -> list[str]:
    """Problems with where the rendered *objects* send traffic, judged against the pods of every
    namespace the config's services live in."""
    kube = kube or Kube(connect())
    return endpoint_problems(objects, config, list_lane_pods(kube, config, namespace), namespace)


def endpoint_problems(objects: Iterable[JSON], config: LaneConfig, pods: Iterable[JSON],
                      namespace: str | None = None) -> list[str]:
    """Every VirtualService route to a subset no DestinationRule defines or no ready pod serves.

    Services without a ``selector`` cannot be judged (which pods are theirs is unknown): they are
    no problem (a config may well leave selectors out), `unchecked_services` names them.
    """
    objects, ready = list(objects), [p for p in pods if pod_is_ready(p)]
    subsets: dict[tuple[str, str], Mapping[str, str]] = {}
    for obj in objects:
        if obj.get("kind") == "DestinationRule":
            spec = obj.get("spec") or {}
            for subset in spec.get("subsets") or []:
                subsets[(_bare(str(spec.get("host", ""))), str(subset.get("name")))] = subset.get("labels") or {}
    problems: list[str] = []
    for obj in objects:
        if obj.get("kind") != "VirtualService":
            continue
        name = (obj.get("metadata") or {}).get("name")
        for i, http in enumerate((obj.get("spec") or {}).get("http") or []):
            for j, route in enumerate(http.get("route") or []):
                dest = route.get("destination") or {}
                host, subset = _bare(str(dest.get("host", ""))), dest.get("subset")
                svc = config.service_by_host(host)
                where = f"VirtualService/{name} http[{i}].route[{j}]"
                if subset is None or svc is None:
                    continue
                if (host, subset) not in subsets:
                    problems.append(f"{where}: subset {subset!r} of {host} is defined by no DestinationRule")
                elif not svc.selector:
                    continue
                elif not any(_in_home(p, svc, namespace) and _serves(p, svc, subsets[(host, subset)]) for p in ready):
                    wanted = ",".join(f"{k}={v}" for k, v in {**svc.selector, **subsets[(host, subset)]}.items())
                    problems.append(f"{where}: subset {subset!r} of {host} has no ready pod ({wanted})")
    return problems


def unchecked_services(objects: Iterable[JSON], config: LaneConfig) -> list[str]:
    """A warning for each routed service without a ``selector``, whose endpoints no check can see,
    so the silence of `endpoint_problems` about it is not mistaken for health."""
    routed = {_bare(str((route.get("destination") or {}).get("host", "")))
              for obj in objects if obj.get("kind") == "VirtualService"
              for http in (obj.get("spec") or {}).get("http") or [] for route in http.get("route") or []}
    unjudged = sorted(svc.name for host in routed if (svc := config.service_by_host(host)) and not svc.selector)
    return [f"service {s}: no selector in the config, its endpoints cannot be checked" for s in unjudged]


def _serves(pod: JSON, svc: Service, subset_labels: Mapping[str, str]) -> bool:
    return pod_matches(pod, svc.selector) and (not subset_labels or pod_matches(pod, subset_labels))


def _bare(host: str) -> str:
    """``c.lanes.svc.cluster.local`` -> ``c``: the short name the config uses."""
    return host.split(".", 1)[0] if ".svc" in host else host
