"""The ``lane`` command line: one subcommand per module, each imported only when it runs.

A command module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported
lazily (`lane.cli.parser`) so ``lane mesh render`` never pays for the data plane and nothing here
imports locust. Bad input is one line on stderr and exit status 2, before anything is started:
argparse's errors are one line (`OneLineParser`), and a `LaneError` a command raises is printed as
one line here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Final

from lane.cli.parser import LazyParser, add_lazy_commands, add_subcommands, parse_command_line
from lane.core.errors import LaneError
from lane.process.options import log_level

__all__ = ["COMMANDS", "EXTRAS", "build_parser", "main", "missing_extra"]

# name -> (module, one-line help)
COMMANDS: Final[dict[str, tuple[str, str]]] = {
    "check": ("lane.cli.check", "validate a lane config and show its lanes, rules and services"),
    "schema": ("lane.core.config_schema", "print the config's JSON Schema, for editors that check lane files"),
    "gateway": ("lane.gateway.main", "run the lane gateway: color requests and forward them down their lane"),
    "sidecar": ("lane.sidecar.main", "run a lane sidecar beside one service instance"),
    "demo": ("lane.demo.main", "run the a -> b -> c demo topology on 127.0.0.1"),
    "demo-app": ("lane.demo.app", "run one demo application (used by the demo and the images)"),
    "demo-grpc": ("lane.demo.grpc_call", "make one gRPC call through the demo's gateway and show its lane path"),
    "graph": ("lane.graph.cli", "draw the live lane topology of running proxies (SVG, DOT or JSON)"),
    "inject": ("mesh_config.inject", "add the lane sidecar container to Kubernetes Deployments"),
    "mesh": ("mesh_config.cli", "render, validate, verify and apply Istio lane config"),
    "loadtest": ("loadtest.cli", "prove under load (locust) that every request took its lane"),
    "rollout": ("rollout.cli", "open a lane to more users step by step, judged by metrics, rolled back on failure"),
}


# The extra each command needs beyond the library (`pip install lane` is the propagator alone).
EXTRAS: Final[dict[str, str]] = {
    "check": "config", "schema": "config", "inject": "config", "gateway": "proxy", "sidecar": "proxy",
    "demo": "proxy", "demo-app": "proxy", "demo-grpc": "proxy,grpc", "graph": "proxy", "rollout": "proxy", "mesh": "mesh",
    "loadtest": "loadtest",
}
_OWN_PACKAGES: Final = frozenset({"lane", "mesh_config", "loadtest", "rollout"})


def missing_extra(exc: ModuleNotFoundError, command: str) -> LaneError | None:
    """The one-line refusal for a package *command* needs that is not installed; None for our own modules."""
    missing = (exc.name or "").partition(".")[0]
    if not missing or missing in _OWN_PACKAGES:
        return None
    extra = EXTRAS.get(command, "all")
    return LaneError(f"'lane {command}' needs the Python package {missing!r}, which is not installed: "
                     f"pip install 'lane[{extra}]'")


def _import_command(module: str) -> ModuleType:
    """Import a command's module; a missing optional package is a one-line refusal naming the extra."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        command = next((name for name, (mod, _) in COMMANDS.items() if mod == module), module)
        refusal = missing_extra(exc, command)
        if refusal is None:
            raise
        raise refusal from None


class _VersionAction(argparse.Action):
    """``--version``: the line is worked out only when asked for (it looks for compiled modules)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from lane.cli.build_info import version_line

        sys.stdout.write(version_line() + "\n")
        parser.exit()


class _LaneParser(LazyParser):
    """Every parser of the ``lane`` tree takes ``--log-level``, so it works before or after a command."""

    def add_shared_options(self) -> None:
        # SUPPRESS: a subcommand that is not given it leaves the value parsed before the command alone.
        self.add_argument("--log-level", type=log_level, default=argparse.SUPPRESS,
                          help="logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL (default INFO)")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``lane`` parser; each command's module is imported only when that command is parsed
    (*argv* is accepted for callers of the older signature and not needed)."""
    parser = _LaneParser(prog="lane", description="Full-link gray release (traffic lanes) from one YAML file.")
    parser.set_defaults(log_level="INFO")
    parser.add_argument("--version", action=_VersionAction, nargs=0,
                        help="print the version and whether the hot path is compiled (make compiled), then exit")
    add_lazy_commands(add_subcommands(parser, "command", "COMMAND"), COMMANDS, importer=_import_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_command_line(build_parser(), sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run_command(args) or 0)
    except LaneError as exc:  # a command's own refusal that it did not print itself
        print(f"{args.command_parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an optional package a command imports only when it runs
        refusal = missing_extra(exc, str(getattr(args, "command", "")))
        if refusal is None:
            raise
        print(f"{args.command_parser.prog}: error: {refusal}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
