"""A faithful in-process fake of the few Kubernetes API endpoints `lane mesh apply/sync` use.

Why a fake: no Kubernetes API server (nor kind, k3s or a container runtime) can run on the machines
these tests run on. So this aiohttp app, on 127.0.0.1 and a free port, implements exactly the REST
surface the real `kubernetes` Python client calls, and the tests drive the *real* client code
(``ApiClient`` -> ``RESTClientObject`` -> urllib3 -> ``kubernetes.watch.Watch``) against it:

- list (``GET .../pods``, ``GET /apis/networking.istio.io/v1/namespaces/N/virtualservices``) with
  ``labelSelector`` (equality, inequality, existence and set-based terms) and the list
  ``metadata.resourceVersion``;
- watch (``?watch=true``): a chunked stream of JSON lines ``{"type": ADDED|MODIFIED|DELETED|BOOKMARK|
  ERROR, "object": ...}`` starting after ``resourceVersion`` (or synthetic ADDED events without one),
  BOOKMARKs when ``allowWatchBookmarks`` is set, ``timeoutSeconds``, and the API server's answer to
  a compacted resourceVersion: HTTP 200 with one ``ERROR`` event carrying Status code 410 (Expired);
- server-side apply (``PATCH`` with ``application/apply-patch+yaml``): ``fieldManager`` required,
  per-manager field ownership with maps granular and lists atomic (what a CRD without list-type
  markers gets, i.e. Istio's), removal of fields a manager stops applying, 409 conflicts unless
  ``force=true``, no-op applies that leave ``resourceVersion`` alone, ``managedFields``;
- ``dryRun=All`` on PATCH and DELETE (the answer is computed, nothing is stored or watched);
- ``DELETE`` answering a ``Status``; 404/415/422 ``Status`` errors shaped like the real ones;
- the authorization attributes RBAC would check for each request (`Access`: namespace, API group,
  resource, verb), the way the API server derives them: GET of a name is ``get``, of a collection
  ``list`` (``watch`` with ``?watch=true``), PATCH ``patch``, DELETE ``delete``, and a server-side
  apply that creates its object is authorized as ``create`` as well (kubernetes.io, "Patch and
  apply"). Tests compare them with the Roles lane ships (`access`).

What it does not do (lane never calls it): authentication, other patch types, strategic merge of
core objects, field selectors, pagination. Pods are created and changed by the test through
methods (`put_pod`, `set_ready`, `delete_pod`) the way the kubelet and controllers would, and every
request is recorded (`requests`) so tests can count what the client really sent.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from aiohttp import web

__all__ = ["Access", "FakeKube", "Recorded"]

JSON = dict[str, Any]

# (group, plural) -> (kind, served versions). "" is the core group.
RESOURCES: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    ("", "pods"): ("Pod", ("v1",)),
    ("", "services"): ("Service", ("v1",)),
    ("", "configmaps"): ("ConfigMap", ("v1",)),
    ("networking.istio.io", "virtualservices"): ("VirtualService", ("v1", "v1beta1", "v1alpha3")),
    ("networking.istio.io", "destinationrules"): ("DestinationRule", ("v1", "v1beta1", "v1alpha3")),
    ("networking.istio.io", "gateways"): ("Gateway", ("v1", "v1beta1", "v1alpha3")),
    ("networking.istio.io", "serviceentries"): ("ServiceEntry", ("v1", "v1beta1", "v1alpha3")),
    ("networking.istio.io", "sidecars"): ("Sidecar", ("v1", "v1beta1", "v1alpha3")),
    ("networking.istio.io", "envoyfilters"): ("EnvoyFilter", ("v1alpha3",)),
}
_IDENTITY = {("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "namespace")}
_SERVER_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields")


@dataclass(frozen=True, slots=True, order=True)
class Access:
    """What RBAC authorizes one request as."""

    namespace: str
    group: str
    resource: str
    verb: str


@dataclass(frozen=True, slots=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    content_type: str


@dataclass
class _Stored:
    obj: JSON
    owners: dict[str, set[tuple[str, ...]]] = field(default_factory=dict)


@dataclass
class _Watcher:
    key: tuple[str, str, str]  # group, plural, namespace
    selector: str
    queue: asyncio.Queue[JSON | None]


class FakeKube:
    """The fake API server; use as a context manager: ``with FakeKube() as kube: kube.url``."""

    def __init__(self, *, bookmark_interval: float = 1.0) -> None:
        self.bookmark_interval = bookmark_interval
        self._lock = threading.RLock()
        self._rv = 100
        self._floor = 0  # watches from a resourceVersion below this get 410 Gone
        self._objects: dict[tuple[str, str, str, str], _Stored] = {}  # group, plural, ns, name
        self._history: list[tuple[int, tuple[str, str, str], str, JSON]] = []
        self._watchers: list[_Watcher] = []
        self._fail: list[int] = []
        self.requests: list[Recorded] = []
        self._access: list[Access] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-kube", daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> FakeKube:  # noqa: PYI034
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop_watches()
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._record])
        for prefix in ("/api/{version}", "/apis/{group}/{version}"):
            base = prefix + "/namespaces/{namespace}/{plural}"
            app.router.add_get(base, self._list)
            app.router.add_get(base + "/{name}", self._get)
            app.router.add_patch(base + "/{name}", self._patch)
            app.router.add_delete(base + "/{name}", self._delete)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, namespace: str = "default") -> str:
        """A kubeconfig document pointing at this fake, as a user's ~/.kube/config would."""
        return str(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        }))

    # -- what tests do to the cluster -----------------------------------------------------------------
    def put_pod(self, name: str, labels: dict[str, str], *, ready: bool = True, namespace: str = "default") -> None:
        """Create or replace a pod (the scheduler and kubelet at work)."""
        pod: JSON = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
            "spec": {"containers": [{"name": "app", "image": "lane:dev"}]},
            "status": _pod_status(ready),
        }
        with self._lock:
            stored = self._objects.get(("", "pods", namespace, name))
            self._store(("", "pods", namespace, name), pod, "MODIFIED" if stored else "ADDED")

    def set_ready(self, name: str, ready: bool, *, namespace: str = "default") -> None:
        with self._lock:
            pod = copy.deepcopy(self._objects[("", "pods", namespace, name)].obj)
            pod["status"] = _pod_status(ready)
            self._store(("", "pods", namespace, name), pod, "MODIFIED")

    def delete_pod(self, name: str, *, namespace: str = "default") -> None:
        with self._lock:
            self._remove(("", "pods", namespace, name))

    def object(self, group: str, plural: str, name: str, namespace: str = "default") -> JSON | None:
        with self._lock:
            stored = self._objects.get((group, plural, namespace, name))
            return copy.deepcopy(stored.obj) if stored else None

    def objects(self, group: str, plural: str, namespace: str = "default") -> dict[str, JSON]:
        with self._lock:
            return {k[3]: copy.deepcopy(s.obj) for k, s in self._objects.items() if k[:3] == (group, plural, namespace)}

    def put_object(self, obj: JSON, *, manager: str = "someone-else") -> None:
        """Create an object as another field manager would (e.g. a human with kubectl)."""
        group = obj["apiVersion"].rpartition("/")[0]
        plural = _plural_of(group, obj["kind"])
        ns = obj["metadata"].get("namespace", "default")
        with self._lock:
            key = (group, plural, ns, obj["metadata"]["name"])
            stored = self._objects.get(key)
            result, owners = _apply(stored, copy.deepcopy(obj), manager, force=True)
            self._store(key, result, "MODIFIED" if stored else "ADDED")
            self._objects[key].owners = owners

    def compact(self) -> None:
        """Forget the event history (etcd compaction): older resourceVersions now answer 410 Gone."""
        with self._lock:
            self._floor = self._rv
            self._history.clear()

    def drop_watches(self, *, gone: bool = False) -> None:
        """End every open watch stream (an API server restart); *gone* first sends a 410 ERROR event."""
        with self._lock:
            watchers, self._watchers = self._watchers, []
        for w in watchers:
            if gone:
                self._loop.call_soon_threadsafe(w.queue.put_nowait, _expired_event(self._floor))
            self._loop.call_soon_threadsafe(w.queue.put_nowait, None)

    def fail_next(self, *statuses: int) -> None:
        """Answer the next requests with these HTTP error statuses (an overloaded API server)."""
        with self._lock:
            self._fail.extend(statuses)

    def count(self, method: str, path_part: str = "", *, dry_run: bool | None = None) -> int:
        with self._lock:
            return sum(
                1 for r in self.requests
                if r.method == method and path_part in r.path
                and (dry_run is None or (r.query.get("dryRun") == "All") == dry_run)
                and r.query.get("watch") not in ("true", "1")
            )

    def watching(self) -> int:
        """Watch streams open right now (events reach only these)."""
        with self._lock:
            return len(self._watchers)

    def watch_count(self) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.query.get("watch") in ("true", "1"))

    def access(self) -> set[Access]:
        """Every authorization the requests so far needed."""
        with self._lock:
            return set(self._access)

    def _authorize(self, request: web.Request, verb: str) -> None:
        """Record what RBAC checks for *request* as *verb* (call with the lock held)."""
        info = request.match_info
        if "namespace" not in info:
            return
        if verb == "get" and "name" not in info:
            verb = "watch" if request.query.get("watch") in ("true", "1") else "list"
        self._access.append(Access(info["namespace"], info.get("group", ""), info["plural"], verb))

    # -- storage (call with the lock held) ---------------------------------------------------------
    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _store(self, key: tuple[str, str, str, str], obj: JSON, event: str) -> JSON:
        meta = obj.setdefault("metadata", {})
        old = self._objects.get(key)
        meta.setdefault("uid", old.obj["metadata"].get("uid") if old else str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", "2024-01-01T00:00:00Z")
        meta["resourceVersion"] = self._next_rv()
        owners = old.owners if old else {}
        self._objects[key] = _Stored(obj, owners)
        self._emit(key, event, obj)
        return obj

    def _remove(self, key: tuple[str, str, str, str]) -> JSON:
        stored = self._objects.pop(key)
        obj = copy.deepcopy(stored.obj)
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self._emit(key, "DELETED", obj)
        return obj

    def _emit(self, key: tuple[str, str, str, str], event: str, obj: JSON) -> None:
        snapshot = copy.deepcopy(obj)
        self._history.append((self._rv, key[:3], event, snapshot))
        for w in self._watchers:
            if w.key == key[:3] and _selects(w.selector, snapshot):
                self._loop.call_soon_threadsafe(w.queue.put_nowait, {"type": event, "object": snapshot})

    # -- HTTP ------------------------------------------------------------------------------------------
    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        with self._lock:
            self.requests.append(Recorded(request.method, request.path, dict(request.query), request.content_type))
            self._authorize(request, _VERBS.get(request.method, request.method.lower()))
            status = self._fail.pop(0) if self._fail else None
        if status is not None:
            return _status(status, "InternalError" if status >= 500 else "TooManyRequests", "injected failure")
        try:
            resp: web.StreamResponse = await handler(request)
        except _ApiError as exc:
            return _status(exc.code, exc.reason, exc.message)
        return resp

    def _resource(self, request: web.Request) -> tuple[str, str, str, str]:
        group = request.match_info.get("group", "")
        version, plural = request.match_info["version"], request.match_info["plural"]
        known = RESOURCES.get((group, plural))
        if known is None or version not in known[1]:
            raise _error(404, "NotFound", f"the server could not find the requested resource ({group}/{version} {plural})")
        return group, version, plural, known[0]

    async def _list(self, request: web.Request) -> web.StreamResponse:
        group, version, plural, kind = self._resource(request)
        ns = request.match_info["namespace"]
        selector = request.query.get("labelSelector", "")
        try:
            _selects(selector, {})
        except ValueError as exc:
            raise _error(400, "BadRequest", f"unable to parse requirement: {exc}") from None
        if request.query.get("watch") in ("true", "1"):
            return await self._watch(request, (group, plural, ns), selector)
        with self._lock:
            items = [copy.deepcopy(s.obj) for k, s in sorted(self._objects.items())
                     if k[:3] == (group, plural, ns) and _selects(selector, s.obj)]
            rv = str(self._rv)
        api_version = f"{group}/{version}" if group else version
        for item in items:
            item["apiVersion"] = api_version
        return web.json_response({"apiVersion": api_version, "kind": kind + "List",
                                  "metadata": {"resourceVersion": rv}, "items": items})

    async def _watch(self, request: web.Request, key: tuple[str, str, str], selector: str) -> web.StreamResponse:
        queue: asyncio.Queue[JSON | None] = asyncio.Queue()
        since = request.query.get("resourceVersion", "")
        with self._lock:
            if since not in ("", "0") and int(since) < self._floor:
                queue.put_nowait(_expired_event(self._floor))
                queue.put_nowait(None)
            elif since in ("", "0"):
                for stored_key, s in sorted(self._objects.items()):
                    if stored_key[:3] == key and _selects(selector, s.obj):
                        queue.put_nowait({"type": "ADDED", "object": copy.deepcopy(s.obj)})
            else:
                for rv, collection, kind_of_event, obj in self._history:
                    if rv > int(since) and collection == key and _selects(selector, obj):
                        queue.put_nowait({"type": kind_of_event, "object": copy.deepcopy(obj)})
            watcher = _Watcher(key, selector, queue)
            self._watchers.append(watcher)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        timeout = float(request.query.get("timeoutSeconds", "1800"))
        bookmarks = request.query.get("allowWatchBookmarks") in ("true", "1")
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                wait = min(left, self.bookmark_interval) if bookmarks else left
                event: JSON | None
                try:
                    event = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    if bookmarks:
                        with self._lock:
                            event = {"type": "BOOKMARK", "object": {"kind": RESOURCES[key[:2]][0],
                                     "metadata": {"resourceVersion": str(self._rv)}}}
                    else:
                        continue
                if event is None:
                    break
                await resp.write(json.dumps(event).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            with self._lock:
                if watcher in self._watchers:
                    self._watchers.remove(watcher)
        return resp

    async def _get(self, request: web.Request) -> web.Response:
        group, version, plural, _ = self._resource(request)
        key = (group, plural, request.match_info["namespace"], request.match_info["name"])
        with self._lock:
            stored = self._objects.get(key)
            if stored is None:
                raise _not_found(plural, key[3])
            obj = copy.deepcopy(stored.obj)
        obj["apiVersion"] = f"{group}/{version}" if group else version
        return web.json_response(obj)

    async def _patch(self, request: web.Request) -> web.Response:
        group, version, plural, kind = self._resource(request)
        ns, name = request.match_info["namespace"], request.match_info["name"]
        if request.content_type != "application/apply-patch+yaml":
            raise _error(415, "UnsupportedMediaType", f"the fake supports only server-side apply, not {request.content_type}")
        manager = request.query.get("fieldManager", "")
        if not manager:
            raise _error(422, "Invalid", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: "
                                         "is required for apply patch")
        dry_run = _dry_run(request)
        force = request.query.get("force") in ("true", "True", "1")
        body = yaml.safe_load(await request.text())
        api_version = f"{group}/{version}" if group else version
        if not isinstance(body, dict) or body.get("apiVersion") != api_version or body.get("kind") != kind:
            raise _error(400, "BadRequest", f"apply body must be a {api_version} {kind}")
        meta = body.get("metadata") or {}
        if meta.get("name") != name or meta.get("namespace", ns) != ns:
            raise _error(422, "Invalid", "metadata.name/namespace must match the request URL")
        body["metadata"] = {**meta, "namespace": ns}
        key = (group, plural, ns, name)
        with self._lock:
            stored = self._objects.get(key)
            if stored is None:  # a server-side apply that creates is authorized as create too
                self._authorize(request, "create")
            result, owners = _apply(stored, body, manager, force)
            if stored is not None and _strip_server(result) == _strip_server(stored.obj):
                return web.json_response(copy.deepcopy(stored.obj))  # a no-op apply keeps resourceVersion
            if dry_run:
                result["metadata"].setdefault("uid", str(uuid.uuid4()))
                return web.json_response(result, status=200 if stored else 201)
            if stored is not None and result.get("spec") != stored.obj.get("spec"):
                result["metadata"]["generation"] = stored.obj["metadata"].get("generation", 1) + 1
            result = self._store(key, result, "MODIFIED" if stored else "ADDED")
            self._objects[key].owners = owners
            return web.json_response(copy.deepcopy(result), status=200 if stored else 201)

    async def _delete(self, request: web.Request) -> web.Response:
        group, _, plural, _ = self._resource(request)
        key = (group, plural, request.match_info["namespace"], request.match_info["name"])
        with self._lock:
            if key not in self._objects:
                raise _not_found(plural, key[3])
            if not _dry_run(request):
                self._remove(key)
        return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                  "details": {"name": key[3], "group": group, "kind": plural,
                                              "uid": "deleted"}})


_VERBS = {"GET": "get", "PATCH": "patch", "DELETE": "delete", "POST": "create", "PUT": "update"}


def _dry_run(request: web.Request) -> bool:
    value = request.query.get("dryRun")
    if value not in (None, "All"):
        raise _error(400, "BadRequest", f"unsupported dryRun value {value!r}; only All")
    return value == "All"


def _pod_status(ready: bool) -> JSON:
    flag = "True" if ready else "False"
    return {"phase": "Running", "podIP": "10.0.0.1",
            "conditions": [{"type": "Ready", "status": flag}, {"type": "ContainersReady", "status": flag}]}


def _plural_of(group: str, kind: str) -> str:
    return next(p for (g, p), (k, _) in RESOURCES.items() if g == group and k == kind)


def _expired_event(floor: int) -> JSON:
    return {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                        "message": f"too old resource version (compacted at {floor})",
                                        "reason": "Expired", "code": 410}}


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": message, "reason": reason, "code": code}, status=code)


class _ApiError(Exception):
    """Answered by the recording middleware as a Kubernetes ``Status`` body."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def _error(code: int, reason: str, message: str) -> _ApiError:
    return _ApiError(code, reason, message)


def _not_found(plural: str, name: str) -> _ApiError:
    return _error(404, "NotFound", f'{plural} "{name}" not found')


# -- label selectors ---------------------------------------------------------------------------------------
_TERM = re.compile(r"\s*(!?)([A-Za-z0-9./_-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9._-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*")


def _terms(selector: str) -> Iterator[str]:
    depth, start = 0, 0
    for i, ch in enumerate(selector):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            yield selector[start:i]
            start = i + 1
    yield selector[start:]


def _selects(selector: str, obj: JSON) -> bool:
    """Whether *obj*'s labels satisfy a Kubernetes label selector string (raises ValueError if malformed)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in _terms(selector):
        if not term.strip():
            continue
        m = _TERM.fullmatch(term)
        if m is None:
            raise ValueError(term)
        neg, key, op, value, setop, values = m.groups()
        if op in ("=", "=="):
            ok = labels.get(key) == value
        elif op == "!=":
            ok = labels.get(key) != value
        elif setop:
            members = {v.strip() for v in values.split(",")}
            ok = labels.get(key) in members if setop == "in" else labels.get(key) not in members
        else:
            ok = key in labels
        if neg:
            if op or setop:
                raise ValueError(term)
            ok = not ok
        if not ok:
            return False
    return True


# -- server-side apply -------------------------------------------------------------------------------------
def _leaves(obj: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Field paths of an applied config; maps are granular, lists and scalars atomic."""
    if isinstance(obj, dict) and obj:
        out: dict[tuple[str, ...], Any] = {}
        for k, v in obj.items():
            out.update(_leaves(v, (*prefix, str(k))))
        return out
    return {prefix: obj}


def _lookup(obj: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    for part in path:
        if not isinstance(obj, dict) or part not in obj:
            return False, None
        obj = obj[part]
    return True, obj


def _remove_path(obj: JSON, path: tuple[str, ...]) -> None:
    parents = [obj]
    for part in path[:-1]:
        nxt = parents[-1].get(part)
        if not isinstance(nxt, dict):
            return
        parents.append(nxt)
    parents[-1].pop(path[-1], None)
    for depth in range(len(path) - 2, -1, -1):  # prune maps the removal emptied
        if not parents[depth + 1]:
            parents[depth].pop(path[depth], None)


def _set_path(obj: JSON, path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        if not isinstance(obj.get(part), dict):
            obj[part] = {}
        obj = obj[part]
    obj[path[-1]] = copy.deepcopy(value)


def _fields_v1(paths: set[tuple[str, ...]]) -> JSON:
    out: JSON = {}
    for path in sorted(paths):
        node = out
        for part in path:
            node = node.setdefault(f"f:{part}", {})
    return out


def _apply(stored: _Stored | None, applied: JSON, manager: str,
           force: bool) -> tuple[JSON, dict[str, set[tuple[str, ...]]]]:
    live = copy.deepcopy(stored.obj) if stored else {}
    owners = {m: set(p) for m, p in (stored.owners if stored else {}).items()}
    for key in _SERVER_METADATA:
        applied.get("metadata", {}).pop(key, None)
    leaves = {p: v for p, v in _leaves(applied).items() if p not in _IDENTITY}
    conflicts = []
    for path, value in leaves.items():
        for other, paths in owners.items():
            if other != manager and path in paths and _lookup(live, path) != (True, value):
                conflicts.append((other, path))
    if conflicts and not force:
        text = "; ".join(f'conflict with "{m}": .{".".join(p)}' for m, p in conflicts)
        raise _error(409, "Conflict", f"Apply failed with {len(conflicts)} conflict(s): {text}")
    for other, path in conflicts:
        owners[other].discard(path)
    for path in owners.get(manager, set()) - set(leaves):
        if not any(path in paths for m, paths in owners.items() if m != manager):
            _remove_path(live, path)
    for path in _IDENTITY:
        found, value = _lookup(applied, path)
        if found:
            _set_path(live, path, value)
    for path, value in leaves.items():
        _set_path(live, path, value)
    owners[manager] = set(leaves)
    owners = {m: p for m, p in owners.items() if p}
    live["metadata"]["managedFields"] = [
        {"manager": m, "operation": "Apply", "apiVersion": live["apiVersion"], "fieldsType": "FieldsV1",
         "fieldsV1": _fields_v1(p)} for m, p in sorted(owners.items())
    ]
    if stored is not None:
        for key in ("uid", "creationTimestamp", "resourceVersion", "generation"):
            if key in stored.obj["metadata"]:
                live["metadata"][key] = stored.obj["metadata"][key]
    else:
        live["metadata"]["generation"] = 1
    return live, owners


def _strip_server(obj: JSON) -> JSON:
    out = copy.deepcopy(obj)
    for key in ("resourceVersion", "managedFields", "generation"):
        out.get("metadata", {}).pop(key, None)
    out.pop("apiVersion", None)
    return out
