"""``lane inject``: add the lane sidecar to the pods of Kubernetes workloads, like ``istioctl kube-inject``.

The sidecar is a second container in the pod. It learns its service and lane from the pod's own
labels through the downward API (``LANE_SERVICE`` from ``app``, ``LANE_LANE`` from the config's
``label_key``), so one injected template serves every lane: the gray Deployment differs from the
base one only in its label. It receives traffic on ``lane-in`` (15006) and hands it to the app on
127.0.0.1; the app's outbound calls reach it because every original container gets ``HTTP_PROXY``
pointing at the sidecar's outbound port. Services in the same input that select an injected pod
and target the app's port are re-pointed at ``lane-in`` — otherwise traffic would skip the sidecar.

Original containers are kept as they are, apart from those proxy variables (an existing
``HTTP_PROXY`` is left alone). Injecting twice gives the same output as injecting once.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Final, TypeVar

import yaml

from lane.core.config_load import load_config
from lane.core.config_yaml import explain
from lane.core.errors import ConfigError, LaneError
from lane.process.options import port as port_number
from lane.process.options import text_file

__all__ = [
    "CONFIG_DIR",
    "CONFIG_VOLUME",
    "INJECTED_ANNOTATION",
    "SIDECAR_NAME",
    "WORKLOAD_KINDS",
    "InjectError",
    "InjectOptions",
    "add_arguments",
    "default_image",
    "inject_documents",
    "run",
    "sidecar_container",
]

SIDECAR_NAME: Final = "lane-sidecar"
CONFIG_VOLUME: Final = "lane-config"
CONFIG_DIR: Final = "/etc/lane"
INJECTED_ANNOTATION: Final = "lane/sidecar-injected"
WORKLOAD_KINDS: Final = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"})
RUN_AS: Final = 10001  # the image's non-root user
JSON = dict[str, Any]
_Arg = TypeVar("_Arg")
_Result = TypeVar("_Result")


class InjectError(LaneError):
    """A manifest the sidecar cannot be added to; the message names the object and the fix."""


def default_image() -> str:
    try:
        return f"lane:{metadata.version('lane')}"
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "lane:latest"


@dataclass(frozen=True, slots=True)
class InjectOptions:
    image: str
    config_map: str = "lane-config"
    label_key: str = "version"  # the pod label naming the lane
    service_label: str = "app"  # the pod label naming the service
    app_port: int | None = None  # default: the first containerPort of the first container
    inbound_port: int = 15006
    outbound_port: int = 15001
    admin_port: int = 15000
    services: frozenset[str] | None = None  # when known (from --config): service names the config has


def _label_env(name: str, label: str) -> JSON:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{label}']"}}}


def sidecar_container(opts: InjectOptions, app_port: int) -> JSON:
    """The sidecar container: `lane sidecar` beside an app listening on 127.0.0.1:*app_port*."""
    def probe(**more: int) -> JSON:
        return {"httpGet": {"path": "/healthz", "port": "lane-admin"}, "periodSeconds": 5, **more}

    return {
        "name": SIDECAR_NAME,
        "image": opts.image,
        "args": [
            "sidecar", "--config", f"{CONFIG_DIR}/lane.yaml",
            "--app", f"127.0.0.1:{app_port}",
            "--listen", f"0.0.0.0:{opts.inbound_port}",
            "--outbound", f"127.0.0.1:{opts.outbound_port}",
            "--admin", f"0.0.0.0:{opts.admin_port}",
        ],
        "env": [_label_env("LANE_SERVICE", opts.service_label), _label_env("LANE_LANE", opts.label_key)],
        "ports": [
            {"name": "lane-in", "containerPort": opts.inbound_port, "protocol": "TCP"},
            {"name": "lane-admin", "containerPort": opts.admin_port, "protocol": "TCP"},
        ],
        "readinessProbe": probe(failureThreshold=2),
        "livenessProbe": probe(failureThreshold=6, initialDelaySeconds=5),
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True}],
    }


def _proxy_env(opts: InjectOptions) -> list[JSON]:
    return [
        {"name": "HTTP_PROXY", "value": f"http://127.0.0.1:{opts.outbound_port}"},
        {"name": "NO_PROXY", "value": "127.0.0.1,localhost"},
    ]


def _describe(obj: JSON) -> str:
    meta = obj.get("metadata")
    name = meta.get("name", "?") if isinstance(meta, dict) else "?"
    return f"{obj.get('kind')}/{name}"


def _mapping(parent: JSON, key: str, where: str) -> JSON:
    """``parent[key]`` as a dict, created when absent or null (YAML's ``env:`` with nothing after it)."""
    value = parent.get(key)
    if value is None:
        value = parent[key] = {}
    if not isinstance(value, dict):
        raise InjectError(f"{where}: {key} must be a mapping, got {type(value).__name__}")
    return value


def _list(parent: JSON, key: str, where: str) -> list[Any]:
    """``parent[key]`` as a list, created when absent or null."""
    value = parent.get(key)
    if value is None:
        value = parent[key] = []
    if not isinstance(value, list):
        raise InjectError(f"{where}: {key} must be a list, got {type(value).__name__}")
    return value


def _app_port(obj: JSON, containers: list[JSON], opts: InjectOptions) -> int:
    if opts.app_port is not None:
        return opts.app_port
    for port in (containers[0].get("ports") or []) if containers else []:
        if isinstance(port.get("containerPort"), int):
            return int(port["containerPort"])
    raise InjectError(f"{_describe(obj)}: its first container declares no containerPort, so the app's "
                      "port is unknown; pass --app-port")


def _inject_template(obj: JSON, opts: InjectOptions) -> tuple[Mapping[str, str], int, set[str]]:
    """Add the sidecar to *obj*'s pod template in place; returns the pod labels, app port and port names."""
    template = (obj.get("spec") or {}).get("template")
    if not isinstance(template, dict) or not isinstance((template.get("spec") or {}).get("containers"), list):
        raise InjectError(f"{_describe(obj)}: no spec.template.spec.containers to add the sidecar to")
    labels = (template.get("metadata") or {}).get("labels") or {}
    for key, what in ((opts.label_key, "the lane"), (opts.service_label, "the service")):
        if key not in labels:
            raise InjectError(f"{_describe(obj)}: the pod template has no label {key!r} ({what} the sidecar "
                              f"serves); add it, or pass --{'label-key' if what == 'the lane' else 'service-label'}")
    if opts.services is not None and labels[opts.service_label] not in opts.services:
        raise InjectError(f"{_describe(obj)}: pod label {opts.service_label}={labels[opts.service_label]} is not "
                          f"a service of the lane config ({', '.join(sorted(opts.services))})")
    pod = template["spec"]
    if not all(isinstance(c, dict) for c in pod["containers"]):
        raise InjectError(f"{_describe(obj)}: every entry of spec.template.spec.containers must be a mapping")
    containers = [c for c in pod["containers"] if c.get("name") != SIDECAR_NAME]
    app_port = _app_port(obj, containers, opts)
    names = {str(p["name"]) for c in containers for p in c.get("ports") or [] if p.get("containerPort") == app_port
             and "name" in p}
    for container in containers:
        env = _list(container, "env", f"{_describe(obj)}: container {container.get('name', '?')}")
        present = {e.get("name") for e in env if isinstance(e, dict)}
        if "HTTP_PROXY" not in present:
            env.extend(e for e in _proxy_env(opts) if e["name"] not in present)
    pod["containers"] = [*containers, sidecar_container(opts, app_port)]
    volumes = [v for v in pod.get("volumes") or [] if v.get("name") != CONFIG_VOLUME]
    pod["volumes"] = [*volumes, {"name": CONFIG_VOLUME, "configMap": {"name": opts.config_map}}]
    meta = _mapping(template, "metadata", f"{_describe(obj)}: the pod template")
    _mapping(meta, "annotations", f"{_describe(obj)}: the pod template's metadata")[INJECTED_ANNOTATION] = "true"
    return labels, app_port, names


def _repoint_service(svc: JSON, pods: list[tuple[Mapping[str, str], int, set[str]]]) -> None:
    spec = svc.get("spec") or {}
    selector = spec.get("selector") or {}
    for labels, app_port, names in pods:
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            continue
        for port in spec.get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            if target == app_port or (isinstance(target, str) and target in names):
                port["targetPort"] = "lane-in"


def inject_documents(docs: Iterable[JSON | None], opts: InjectOptions) -> list[JSON]:
    """Copies of *docs* with every workload injected and the Services in front of them re-pointed."""
    out: list[JSON] = []
    pods = []
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict) or "kind" not in doc:
            raise InjectError(f"expected Kubernetes objects (mappings with a kind), got {str(doc)[:60]!r}")
        doc = copy.deepcopy(doc)
        items = doc.get("items") if doc["kind"] == "List" else [doc]
        for item in items or []:
            if isinstance(item, dict) and item.get("kind") in WORKLOAD_KINDS:
                pods.append(_shaped(_inject_template, item, opts))
        out.append(doc)
    if not pods:
        raise InjectError(f"no workload to inject: expected one of {', '.join(sorted(WORKLOAD_KINDS))}")
    for doc in out:
        for item in doc.get("items") or [] if doc["kind"] == "List" else [doc]:
            if isinstance(item, dict) and item.get("kind") == "Service":
                _shaped(_repoint_service, item, pods)
    return out


def _shaped(step: Callable[[JSON, _Arg], _Result], obj: JSON, arg: _Arg) -> _Result:
    """Run *step* on *obj*; a field of a shape Kubernetes would not accept either (a string where
    a list belongs, ...) becomes an `InjectError` naming the object instead of a traceback."""
    try:
        return step(obj, arg)
    except (AttributeError, TypeError, KeyError) as exc:
        raise InjectError(f"{_describe(obj)}: a field has an unexpected shape ({type(exc).__name__}: {exc}); "
                          "check the manifest with kubectl apply --dry-run=client") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", required=True, type=text_file,
                        help="manifest YAML to inject ('-' reads stdin)")
    parser.add_argument("-o", "--output", help="write here instead of stdout")
    parser.add_argument("--config", "-c", help="lane config: take label_key from it and check service names")
    parser.add_argument("--image", default=default_image(), help="sidecar image (default %(default)s)")
    parser.add_argument("--config-map", default="lane-config", help="ConfigMap holding lane.yaml (default lane-config)")
    parser.add_argument("--label-key", help="pod label naming the lane (default: the config's label_key, else version)")
    parser.add_argument("--service-label", default="app", help="pod label naming the service (default app)")
    parser.add_argument("--app-port", type=port_number, help="the app's port (default: first containerPort)")
    parser.add_argument("--inbound-port", type=port_number, default=15006, help="sidecar inbound port (default 15006)")
    parser.add_argument("--outbound-port", type=port_number, default=15001,
                        help="sidecar outbound/HTTP_PROXY port (default 15001)")
    parser.add_argument("--admin-port", type=port_number, default=15000, help="sidecar admin port (default 15000)")


def run(args: argparse.Namespace) -> int:
    text = ""
    try:
        config = load_config(args.config) if args.config else None
        text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text(encoding="utf-8")
        docs = list(yaml.safe_load_all(text))
        opts = InjectOptions(
            image=args.image, config_map=args.config_map,
            label_key=args.label_key or (config.label_key if config else "version"),
            service_label=args.service_label, app_port=args.app_port, inbound_port=args.inbound_port,
            outbound_port=args.outbound_port, admin_port=args.admin_port,
            services=frozenset(config.services) if config else None,
        )
        injected = inject_documents(docs, opts)
    except (ConfigError, InjectError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot read {args.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as exc:  # stdin; a file was checked while parsing the arguments
        print(f"error: {args.filename}: not UTF-8 text (byte {exc.start}: {exc.reason})", file=sys.stderr)
        return 2
    except yaml.YAMLError as exc:
        where, problem = explain(exc, text)
        print(f"error: {args.filename} is not valid YAML: {where + ': ' if where else ''}{problem}", file=sys.stderr)
        return 2
    rendered = yaml.safe_dump_all(injected, sort_keys=False, default_flow_style=False)
    if args.output:
        try:
            Path(args.output).write_text(rendered, encoding="utf-8")
        except OSError as exc:
            print(f"error: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    else:
        sys.stdout.write(rendered)
    return 0
