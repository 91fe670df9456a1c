"""``lane rollout --mesh``: the share put in force in an Istio mesh, the way `lane mesh apply` puts a config there.

In a mesh the Istio ingress gateway colors requests with lane's Lua, in the EnvoyFilter
`mesh_config.envoy_filter.gateway_filter` renders: the coloring rules, and so the lane's share, are
data inside that script. A step is therefore: the runner writes the share into the config file;
`MeshTarget.push` re-renders the objects from the file (`mesh_config.render.render_objects`) and
server-side applies the coloring EnvoyFilter with `mesh_config.apply.apply_objects`, the code of
``lane mesh apply`` (field manager ``lane``, a dry run first, no write when nothing changed). No
other object depends on a share, so no other is applied, and nothing is pruned.

The share in force is read from the cluster, never from the file: the live EnvoyFilter's script is
compared with the file's rendering at each share of the rule, 0 to 100, and the share it equals is
the one the gateway runs. None equals it when the cluster runs another config (or another lane's
Lua): refused, apply the config first. (An annotation would be simpler to read back, but ``lane mesh
apply`` re-applies the object without it, and server-side apply then drops it; the script is what
the gateway runs.)

Before anything changes, `MeshTarget.open` refuses, in one line (exit 2): a config the renderer
refuses; an entry service without the lane (Istio's metrics could never show the lane at the entry,
see `rollout.istio_source`); an API server that does not answer; a coloring EnvoyFilter that is not
in the cluster; ready pods of the lane or the default lane whose canonical revision, the name
Istio's metrics give them, is not their lane.

The `kubernetes` client is synchronous, so its calls run in a worker thread (`asyncio.to_thread`)
and the runner's loop still sees a Ctrl-C; a call in flight is finished first. urllib3's warning
per retried connection is silenced: a cluster that cannot be reached is reported once, as one line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import aiohttp

from lane.core.config import LaneConfig
from lane.core.config_load import load_config
from lane.core.errors import ConfigError
from mesh_config.apply import apply_objects
from mesh_config.cluster import list_lane_pods, pod_is_ready
from mesh_config.envoy_filter import GATEWAY_FILTER_NAME, lua_of
from mesh_config.kube import Kube, KubeError, Ref, connect
from mesh_config.lua import gateway_lua
from mesh_config.render import render_objects

from .errors import ClusterUnreachable, RolloutInputError
from .istio_source import istio_snapshot
from .metrics_window import Snapshot
from .runner import Cluster
from .share_edit import ShareRule

__all__ = ["REVISION_LABELS", "MeshTarget", "canonical_revision", "coloring_filter", "revision_problems",
           "share_in_filter"]

log = logging.getLogger(__name__)
JSON = dict[str, Any]
T = TypeVar("T")

# The pod labels Istio reads a workload's canonical revision from, in order ("latest" without any).
REVISION_LABELS: Final = ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")


def canonical_revision(labels: Mapping[str, str]) -> str:
    """The revision Istio's metrics name a pod by (``destination_canonical_revision``)."""
    return next((labels[key] for key in REVISION_LABELS if key in labels), "latest")


def revision_problems(config: LaneConfig, pods: Iterable[JSON], lanes: Iterable[str]) -> list[str]:
    """Each ready pod of one of *lanes* that Istio's metrics would count under another revision."""
    wanted = set(lanes)
    problems = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        lane = labels.get(config.label_key)
        if lane in wanted and pod_is_ready(pod) and (revision := canonical_revision(labels)) != lane:
            problems.append(f"pod {meta.get('namespace', '')}/{meta.get('name')} ({config.label_key}={lane}) is "
                            f"revision {revision!r} in Istio's metrics")
    return problems


def coloring_filter(objects: Iterable[JSON]) -> JSON:
    """The rendered EnvoyFilter that runs the gateway's coloring Lua (the one holding the share)."""
    for obj in objects:
        if obj.get("kind") != "EnvoyFilter":
            continue
        patches = (obj.get("spec") or {}).get("configPatches") or []
        if any(((p.get("patch") or {}).get("value") or {}).get("name") == GATEWAY_FILTER_NAME for p in patches):
            return obj
    raise RolloutInputError("the render has no coloring EnvoyFilter for the ingress gateway")


def with_percent(config: LaneConfig, rule: ShareRule, percent: int) -> LaneConfig:
    """*config* with the rule's share set to *percent* (every other field the same objects)."""
    old = config.rules[rule.index]
    assert old.percentage is not None
    new = dataclasses.replace(old, percentage=dataclasses.replace(old.percentage, percent=percent))
    return dataclasses.replace(config, rules=(*config.rules[: rule.index], new, *config.rules[rule.index + 1 :]))


def share_in_filter(live: JSON, config: LaneConfig, rule: ShareRule) -> int | None:
    """The share whose rendering of *config* is the live EnvoyFilter's script, or None if none is."""
    try:
        script = lua_of(live)
    except (KeyError, IndexError, TypeError, ValueError, AssertionError):
        return None
    candidates: list[int] = [rule.percent, *range(101)]  # the file's share first: in force unless a run stopped
    for percent in candidates:
        if gateway_lua(with_percent(config, rule, percent)) == script:
            return percent
    return None


class MeshTarget:
    """The cluster behind ``--mesh``: the coloring EnvoyFilter (the share) and Istio's metrics (the figures)."""

    def __init__(self, kube: Kube, ref: Ref, config: LaneConfig, rule: ShareRule, *, path: Path, namespace: str,
                 prometheus: str, session: aiohttp.ClientSession) -> None:
        self.kube = kube
        self.ref = ref
        self.config = config
        self.rule = rule
        self.path = path
        self.namespace = namespace
        self.prometheus = prometheus
        self.session = session
        self.where = f"in the cluster (EnvoyFilter {ref.namespace}/{ref.name})"

    @classmethod
    async def open(cls, config: LaneConfig, rule: ShareRule, cluster: Cluster, *, path: Path, prometheus: str,
                   session: aiohttp.ClientSession) -> MeshTarget:
        """Check everything `open`'s docstring lists, changing nothing; `RolloutInputError` if one fails."""
        namespace = cluster.namespace or config.mesh.namespace
        if not config.services[config.entry].has_lane(rule.lane):
            raise RolloutInputError(
                f"--mesh judges {rule.lane} at the entry service {config.entry}, which has no {rule.lane} "
                f"instances: Istio's metrics name only the revision that served a request, not the lane it asked for"
            )
        try:
            ref = Ref.of(coloring_filter(render_objects(config, namespace=namespace)), namespace)
        except ConfigError as exc:
            raise RolloutInputError(str(exc)) from None
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        try:
            kube = Kube(connect(cluster.kubeconfig, cluster.context, cluster.server), timeout=cluster.request_timeout)
        except KubeError as exc:
            raise ClusterUnreachable(f"--mesh: {exc}") from None
        target = cls(kube, ref, config, rule, path=path, namespace=namespace, prometheus=prometheus, session=session)
        pods = await target._call(list_lane_pods, kube, config, namespace)
        problems = revision_problems(config, pods, (rule.lane, config.default_lane))
        if problems:
            raise RolloutInputError(
                f"{problems[0]}{f' (and {len(problems) - 1} more pods)' if len(problems) > 1 else ''}, so its "
                f"requests would not count as {config.label_key}'s lane: Istio reads the revision from the label "
                f"{REVISION_LABELS[0]}, else {REVISION_LABELS[1]}, else {REVISION_LABELS[2]}; set "
                f"{REVISION_LABELS[0]} to the lane on the lane's pods"
            )
        return target

    async def _call(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(call, *args, **kwargs)
        except KubeError as exc:
            raise ClusterUnreachable(f"--mesh: the Kubernetes API: {exc}") from None

    async def shares(self) -> list[int]:
        """The share the live coloring EnvoyFilter runs (one gateway config for the whole mesh)."""
        live = await self._call(self.kube.get, self.ref)
        where = f"EnvoyFilter {self.ref.namespace}/{self.ref.name}"
        if live is None:
            raise RolloutInputError(
                f"{where} is not in the cluster: apply the config first (lane mesh apply --config {self.path})"
            )
        share = share_in_filter(live, self.config, self.rule)
        if share is None:
            raise RolloutInputError(
                f"{where} in the cluster is not {self.path}'s at any share of {self.rule.name}: apply the config "
                f"first (lane mesh apply --config {self.path}), or give the config the cluster runs"
            )
        return [share]

    async def push(self, *, best_effort: bool = False) -> None:
        """Render the file as it is now and apply its coloring EnvoyFilter (`ClusterUnreachable` when refused)."""
        try:
            try:
                objects = render_objects(load_config(self.path), namespace=self.namespace)
            except ConfigError as exc:
                raise RolloutInputError(str(exc)) from None
            await self._call(apply_objects, self.kube, [coloring_filter(objects)], self.namespace, prune=False)
        except RolloutInputError as exc:
            if not best_effort:
                raise
            log.error("%s", exc)

    async def snapshot(self) -> Snapshot:
        return await istio_snapshot(self.session, self.prometheus, self.config, self.namespace)
