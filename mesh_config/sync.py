"""``lane mesh sync --watch``: keep the Istio lane objects in step with the pods that really run.

A lane is routable for a service while it has ready pods (`cluster.lanes_from_pods`). Sync lists
the pods carrying the lane label, renders, applies; then watches those pods and, on every event,
re-renders and applies only when the rendered objects differ from what it last applied. So when
the last gray pod of ``c`` goes, c's VirtualService stops sending gray to the empty gray subset
(traffic falls back to the stable lane) within one watch event, and gray returns with a ready pod.

Pod events come in bursts (a rollout replaces ten pods at once, each pod changes several times on
its way to Ready), and every apply costs the API server a dry run and a write per object, so
changes are debounced: a burst leads to one render, and at most one apply, once no event has come
for ``debounce`` seconds (0.5 by default), or at the latest ``max_delay`` after its first event so
a never-quiet namespace still converges. A single change is applied ``debounce`` after it happens.

Pods are listed and watched in every namespace a service of the config lives in
(`cluster.watched_namespaces`: ``name.NS.svc...`` hosts live in NS, short ones in the sync's
namespace), one watch stream per namespace, so a service elsewhere is not mistaken for one without
gray pods. Watches follow the API's rules: resume from the last resourceVersion seen (events and BOOKMARKs)
after a stream ends or drops; on ``410 Gone`` the history is lost, so relist and start over. Any
failure (5xx, 429, refused connection, timeout) backs off exponentially with jitter, capped: a
failed watch then resumes from its resourceVersion, a failed list or apply relists and retries.
The sync runs in one thread with the synchronous `kubernetes` client; a helper thread only reads
the watch stream (one per namespace) into a queue, so the quiet window can end while no event arrives. `stop()` may
be called from another thread or a signal handler.
"""

from __future__ import annotations

import argparse
import logging
import queue
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, TextIO

import urllib3
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from lane.core.config import LaneConfig
from lane.core.errors import ConfigError, LaneError

from .apply import apply_objects
from .cluster import lanes_from_pods, pod_selector, watched_namespaces
from .kube import Kube, add_connection_arguments
from .target import Target, add_target_arguments, run_on_cluster

__all__ = ["DEBOUNCE", "Backoff", "LaneSync", "Renderer", "add_arguments", "run"]

log = logging.getLogger(__name__)
JSON = dict[str, Any]
Renderer = Callable[[LaneConfig, Mapping[str, frozenset[str]], str], list[JSON]]
DEBOUNCE: Final = 0.5  # seconds without a pod event before a burst is rendered and applied
_MAX_DELAY_FACTOR: Final = 10  # a burst that never goes quiet is applied after max(5 s, 10 x debounce)
# what a stream reader hands over: (namespace, event), its failure, the end
_Item = tuple[str, JSON] | BaseException | None


class Backoff:
    """Exponential delays with full jitter: ``uniform(0, min(cap, base * 2**n))``, reset on success."""

    def __init__(self, base: float = 0.2, cap: float = 30.0) -> None:
        self.base, self.cap, self.failures = base, cap, 0

    def next_delay(self) -> float:
        delay = random.uniform(self.base, min(self.cap, self.base * 2 ** self.failures))
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


def _default_renderer(config: LaneConfig, lanes: Mapping[str, frozenset[str]], namespace: str) -> list[JSON]:
    from .render import render_objects

    return render_objects(config, lanes=lanes, namespace=namespace)


class LaneSync:
    """The list/watch/render/apply loop for one lane config (its objects rendered for *namespace*)."""

    def __init__(self, config: LaneConfig, kube: Kube, namespace: str, *, render: Renderer = _default_renderer,
                 watch_timeout: int = 300, debounce: float = DEBOUNCE, max_delay: float | None = None,
                 backoff: Backoff | None = None, out: TextIO | None = None) -> None:
        if debounce < 0 or (max_delay is not None and max_delay < debounce):
            raise ValueError(f"need 0 <= debounce <= max_delay, got debounce={debounce}, max_delay={max_delay}")
        self.config, self.kube, self.namespace, self.render = config, kube, namespace, render
        self.watched = watched_namespaces(config, namespace)
        self.watch_timeout = watch_timeout
        self.debounce = debounce
        self.max_delay = max_delay if max_delay is not None else max(5.0, _MAX_DELAY_FACTOR * debounce)
        self.backoff = backoff or Backoff()
        self.out = out or sys.stdout
        self.pods: dict[str, JSON] = {}  # "namespace/name" -> pod
        self.lanes: Mapping[str, frozenset[str]] | None = None
        self.applied: list[JSON] | None = None  # what the cluster holds from us, as last rendered
        self.renders = 0
        self.applies = 0
        # namespace -> where its next watch resumes; None: relist first
        self.resource_versions: dict[str, str] | None = None
        self._stop = threading.Event()
        self._watches: list[watch.Watch] = []
        self._events: queue.Queue[_Item] | None = None
        self._burst: tuple[float, float] | None = None  # (first, last) unapplied pod event, monotonic

    @property
    def resource_version(self) -> str | None:
        """Where the watch of the first watched namespace resumes (None: a relist comes first)."""
        return None if self.resource_versions is None else self.resource_versions.get(self.watched[0])

    def stop(self) -> None:
        self._stop.set()
        if self._events is not None:
            self._events.put(None)  # wake the sync thread waiting for the next event
        for w in list(self._watches):
            w.stop()  # type: ignore[no-untyped-call]

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def relist(self) -> dict[str, str]:
        """Replace the pod cache with a fresh list of every watched namespace; returns the
        resourceVersion each namespace's watch starts from."""
        pods: dict[str, JSON] = {}
        versions = {}
        for ns in self.watched:
            listed, versions[ns] = self.kube.list_pods(ns, pod_selector(self.config))
            pods.update({f"{ns}/{p['metadata']['name']}": {**p, "metadata": {"namespace": ns, **p["metadata"]}}
                         for p in listed})
        self.pods = pods
        return versions

    def reconcile(self) -> bool:
        """Render for the pods now known and apply if the result changed; True when it applied."""
        lanes = lanes_from_pods(self.config, self.pods.values(), self.namespace)
        objects = self.render(self.config, lanes, self.namespace)
        self.renders += 1
        if objects == self.applied:
            return False
        result = apply_objects(self.kube, objects, self.namespace)
        self.applied, self.applies = objects, self.applies + 1
        if lanes != self.lanes:
            shown = " ".join(f"{s}={','.join(sorted(ls))}" for s, ls in sorted(lanes.items()))
            print(f"lanes with ready pods: {shown}", file=self.out)
            self.lanes = lanes
        print(result.summary(), file=self.out, flush=True)
        return True

    def sync_once(self) -> bool:
        self.relist()
        return self.reconcile()

    def run(self) -> None:
        """List, apply, then watch until `stop()`; never raises for API trouble (it backs off).

        A `ConfigError` (the renderer refuses the config) is raised: no retry can fix it.
        """
        dirty = True
        while not self.stopped:
            try:
                if self.resource_versions is None:
                    self.resource_versions = self.relist()
                    dirty = True
                if dirty:
                    self.reconcile()
                    dirty, self._burst = False, None
                self._watch_once(self.resource_versions)
                self.backoff.reset()
            except ApiException as exc:
                if exc.status == 410:
                    log.info("watch history expired (410 Gone): relisting")
                    self.resource_versions = None
                    continue
                self._pause(f"watch failed: HTTP {exc.status} {exc.reason}")  # then resume from resource_version
            except ConfigError:
                raise
            except LaneError as exc:  # KubeError from list/apply
                self.resource_versions, dirty = None, True
                self._pause(str(exc))
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if self.stopped:
                    break
                self._pause(f"watch connection failed: {exc}")  # then resume from resource_version

    def _pause(self, why: str) -> None:
        delay = self.backoff.next_delay()
        log.warning("%s; retrying in %.1fs", why, delay)
        self._stop.wait(delay)

    def _watch_once(self, versions: Mapping[str, str]) -> None:
        """Follow one watch stream per namespace from its resourceVersion: keep the pod cache and
        `resource_versions` current, and reconcile when a burst of changes has gone quiet (or has
        lasted `max_delay`). The first stream to end (or fail) ends them all; `run` resumes them.

        The streams are read by helper threads (a blocking read cannot time out by itself) and
        handed over through one queue; their failures are re-raised here, in the sync thread.
        """
        events: queue.Queue[_Item] = queue.Queue()
        self._events = events
        readers = []
        for ns in self.watched:
            w = watch.Watch()  # type: ignore[no-untyped-call]
            self._watches.append(w)
            readers.append(threading.Thread(target=self._read, args=(w, ns, versions[ns], events),
                                            name=f"lane-sync-watch-{ns}", daemon=True))
        for reader in readers:
            reader.start()
        try:
            while not self.stopped:  # also covers a stop() that came before this watch existed
                try:
                    item = events.get(timeout=self._quiet_left())
                except queue.Empty:  # the burst is over: one render, at most one apply
                    self.reconcile()
                    self._burst = None
                    continue
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                self._observe(*item)
        finally:
            watches, self._watches, self._events = self._watches, [], None
            for w in watches:
                w.stop()  # type: ignore[no-untyped-call]
            for reader in readers:
                reader.join(5)

    def _read(self, w: watch.Watch, namespace: str, rv: str, events: queue.Queue[_Item]) -> None:
        """A reader thread: every event of *namespace*'s stream into *events*, then its failure or None."""
        try:
            for event in w.stream(  # type: ignore[no-untyped-call]
                    self.kube.core.list_namespaced_pod, namespace, label_selector=pod_selector(self.config),
                    resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=self.watch_timeout,
                    _request_timeout=(10, self.watch_timeout + 30)):
                events.put((namespace, event))
        except BaseException as exc:  # noqa: BLE001 - handed to the sync thread, which decides
            events.put(exc)
        events.put(None)

    def _observe(self, namespace: str, event: JSON) -> None:
        obj = event["raw_object"]
        seen = (obj.get("metadata") or {}).get("resourceVersion")
        if seen and self.resource_versions is not None:
            self.resource_versions[namespace] = str(seen)
        key = f"{namespace}/{(obj.get('metadata') or {}).get('name')}"
        if event["type"] in ("ADDED", "MODIFIED"):
            self.pods[key] = {**obj, "metadata": {"namespace": namespace, **obj["metadata"]}}
        elif event["type"] == "DELETED":
            self.pods.pop(key, None)
        else:
            return  # BOOKMARK: only the resourceVersion moves
        now = time.monotonic()
        self._burst = (self._burst[0] if self._burst else now, now)

    def _quiet_left(self) -> float | None:
        """Seconds until the pending burst is due (None: nothing pending, wait for events)."""
        if self._burst is None:
            return None
        first, last = self._burst
        return max(0.0, min(last + self.debounce, first + self.max_delay) - time.monotonic())


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 <= value <= 60:
        raise argparse.ArgumentTypeError(f"expected seconds from 0 to 60, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser, "namespace to watch and apply into (default: mesh.namespace)")
    parser.add_argument("--watch", action="store_true", help="keep watching pods and re-apply on every change "
                                                             "(without it: sync once and exit)")
    parser.add_argument("--watch-timeout", type=int, default=300,
                        help="seconds before a watch is renewed from its resourceVersion (default 300)")
    parser.add_argument("--debounce", type=_seconds, default=DEBOUNCE,
                        help="seconds without pod events before a burst of changes is applied at once "
                             f"(default {DEBOUNCE}; 0 applies on every event)")
    add_connection_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return run_on_cluster(args, lambda target: _sync(target, args))


def _sync(target: Target, args: argparse.Namespace) -> int:
    sync = LaneSync(target.config, target.kube, target.namespace, watch_timeout=args.watch_timeout,
                    debounce=args.debounce)
    if not args.watch:
        sync.sync_once()
        return 0

    def _stop(signum: int, frame: object) -> None:
        threading.Thread(target=sync.stop, daemon=True).start()  # Watch.stop() may block on a socket

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"watching pods labelled {pod_selector(target.config)} in {', '.join(sync.watched)}", file=sys.stdout,
          flush=True)
    sync.run()
    return 0
