"""Talking to the Kubernetes API: one client from the user's kubeconfig, objects addressed by kind.

`lane mesh apply`, `lane mesh sync` and `render --from-cluster` all need the same few verbs —
get, list, server-side apply, delete, list pods — on plain dicts (what `render_objects` emits and
what the API answers), never the client's generated models. This module is that thin facade over
the real `kubernetes` client: grouped resources (Istio's) go through ``CustomObjectsApi``, core
``v1`` ones through the same ``ApiClient`` request path; every call has a timeout.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from lane.core.errors import LaneError

from .connection import add_connection_arguments
from .model import CONFIG_LABEL, MANAGED_BY_LABEL

__all__ = [
    "CONFIG_LABEL",
    "FIELD_MANAGER",
    "MANAGED_BY",
    "Kube",
    "KubeError",
    "Ref",
    "add_connection_arguments",
    "connect",
    "plural_of",
]

FIELD_MANAGER: Final = "lane"
MANAGED_BY: Final = (MANAGED_BY_LABEL, "lane")
APPLY_PATCH: Final = "application/apply-patch+yaml"
JSON = dict[str, Any]


class KubeError(LaneError):
    """The cluster could not be reached or refused a request; the message says which and why."""


def connect(kubeconfig: str | None = None, context: str | None = None, server: str | None = None) -> client.ApiClient:
    """An ApiClient for the given server, kubeconfig or the in-cluster service account, in that order."""
    if server:
        return client.ApiClient(client.Configuration(host=server.rstrip("/")))
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
    default = Path.home() / ".kube" / "config"
    try:
        if path or default.exists() or not os.environ.get("KUBERNETES_SERVICE_HOST"):
            api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=path, context=context)
            return api
        cfg = client.Configuration()
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        return client.ApiClient(cfg)
    except (config.ConfigException, OSError) as exc:
        raise KubeError(f"cannot load Kubernetes credentials: {exc}") from None


def plural_of(kind: str) -> str:
    """The REST resource name of *kind* (``VirtualService`` -> ``virtualservices``)."""
    lower = kind.lower()
    if lower.endswith(("s", "x", "ch", "sh")):
        return lower + "es"
    if lower.endswith("y") and lower[-2:-1] not in "aeiou":
        return lower[:-1] + "ies"
    return lower + "s"


@dataclass(frozen=True, slots=True, order=True)
class Ref:
    """Where one namespaced object lives in the API."""

    group: str
    version: str
    kind: str
    namespace: str
    name: str

    @property
    def plural(self) -> str:
        return plural_of(self.kind)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"

    @classmethod
    def of(cls, obj: JSON, namespace: str) -> Ref:
        group, _, version = str(obj["apiVersion"]).rpartition("/")
        meta = obj.get("metadata") or {}
        return cls(group, version, str(obj["kind"]), str(meta.get("namespace") or namespace), str(meta["name"]))


class Kube:
    """Dict-in, dict-out verbs on a real ``ApiClient``; API failures become `KubeError` (404 -> None)."""

    def __init__(self, api: client.ApiClient, *, timeout: float = 30.0) -> None:
        self.api = api
        self.timeout = timeout
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def get(self, ref: Ref) -> JSON | None:
        try:
            if ref.group:
                return _body(self.custom.get_namespaced_custom_object(
                    ref.group, ref.version, ref.namespace, ref.plural, ref.name,
                    _preload_content=False, _request_timeout=self.timeout))
            return self._core("GET", ref)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _failed(f"get {ref}", exc) from None
        except urllib3.exceptions.HTTPError as exc:
            raise _unreachable(f"get {ref}", exc) from None

    def list_objects(self, group: str, version: str, kind: str, namespace: str, selector: str = "") -> list[JSON]:
        """Objects of *kind*; an API that does not serve the kind (CRD not installed) lists as empty."""
        try:
            if group:
                answer = _body(self.custom.list_namespaced_custom_object(
                    group, version, namespace, plural_of(kind), label_selector=selector,
                    _preload_content=False, _request_timeout=self.timeout))
            else:
                answer = self._core("GET", Ref(group, version, kind, namespace, ""), {"labelSelector": selector})
        except ApiException as exc:
            if exc.status == 404:
                return []
            raise _failed(f"list {kind}", exc) from None
        except urllib3.exceptions.HTTPError as exc:
            raise _unreachable(f"list {kind}", exc) from None
        items = answer.get("items") or []
        api_version = f"{group}/{version}" if group else version
        return [{"apiVersion": api_version, "kind": kind, **item} for item in items]

    def apply(self, ref: Ref, body: JSON, *, dry_run: bool = False) -> JSON:
        """Server-side apply of *body* as field manager ``lane``, taking over conflicting fields."""
        try:
            if ref.group:
                # raw answer: the generated client maps only 200 and so drops the 201 of a create
                return _body(self.custom.patch_namespaced_custom_object(
                    ref.group, ref.version, ref.namespace, ref.plural, ref.name, body,
                    dry_run="All" if dry_run else None, field_manager=FIELD_MANAGER, force=True,
                    _content_type=APPLY_PATCH, _preload_content=False, _request_timeout=self.timeout))
            query = {"fieldManager": FIELD_MANAGER, "force": "true", **({"dryRun": "All"} if dry_run else {})}
            return self._core("PATCH", ref, query, body)
        except ApiException as exc:
            raise _failed(f"apply {ref}", exc) from None
        except urllib3.exceptions.HTTPError as exc:
            raise _unreachable(f"apply {ref}", exc) from None

    def delete(self, ref: Ref, *, dry_run: bool = False) -> None:
        try:
            if ref.group:
                self.custom.delete_namespaced_custom_object(
                    ref.group, ref.version, ref.namespace, ref.plural, ref.name,
                    dry_run="All" if dry_run else None, _preload_content=False, _request_timeout=self.timeout)
            else:
                self._core("DELETE", ref, {"dryRun": "All"} if dry_run else {})
        except ApiException as exc:
            if exc.status != 404:  # already gone is what we wanted
                raise _failed(f"delete {ref}", exc) from None
        except urllib3.exceptions.HTTPError as exc:
            raise _unreachable(f"delete {ref}", exc) from None

    def list_pods(self, namespace: str, selector: str = "") -> tuple[list[JSON], str]:
        """Pods matching *selector* and the list's resourceVersion (where a watch resumes)."""
        try:
            data = _body(self.core.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False,
                                                       _request_timeout=self.timeout))
        except ApiException as exc:
            raise _failed(f"list pods in {namespace}", exc) from None
        except urllib3.exceptions.HTTPError as exc:
            raise _unreachable(f"list pods in {namespace}", exc) from None
        return list(data.get("items") or []), str((data.get("metadata") or {}).get("resourceVersion") or "")

    def _core(self, method: str, ref: Ref, query: dict[str, str] | None = None, body: JSON | None = None) -> JSON:
        path = f"/api/{ref.version}/namespaces/{ref.namespace}/{ref.plural}" + (f"/{ref.name}" if ref.name else "")
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = APPLY_PATCH
        params = self.api.param_serialize(method=method, resource_path=path, query_params=list((query or {}).items()),
                                          header_params=headers, body=body, auth_settings=["BearerToken"])
        resp = self.api.call_api(*params, _request_timeout=self.timeout)
        resp.read()  # type: ignore[no-untyped-call]
        if not 200 <= resp.status < 300:
            raise ApiException.from_response(http_resp=resp, body=(resp.data or b"").decode("utf-8", "replace"), data=None)
        return _body(resp)


def _body(resp: Any) -> JSON:
    """The JSON object of a raw (``_preload_content=False``) answer."""
    try:
        value = json.loads(resp.data or b"{}")
    except ValueError:
        raise KubeError(f"the API answered something that is not JSON: {bytes(resp.data)[:80]!r}") from None
    if not isinstance(value, dict):
        raise KubeError(f"the API answered {type(value).__name__}, expected a JSON object")
    return value


def _failed(what: str, exc: ApiException) -> KubeError:
    detail = exc.reason or ""
    try:
        detail = json.loads(exc.body or "{}").get("message") or detail
    except (ValueError, AttributeError):
        pass
    return KubeError(f"{what}: HTTP {exc.status}: {detail}")


def _unreachable(what: str, exc: Exception) -> KubeError:
    return KubeError(f"{what}: cannot reach the API server: {exc}")
