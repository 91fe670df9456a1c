"""The ``lane`` command line: one subcommand per module, each imported only when it runs.

A command module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported
lazily so ``lane mesh render`` never pays for the data plane and nothing here imports locust.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence
from typing import Final

__all__ = ["COMMANDS", "build_parser", "main"]

# name -> (module, one-line help)
COMMANDS: Final[dict[str, tuple[str, str]]] = {
    "check": ("lane.check", "validate a lane config and show its lanes, rules and services"),
    "schema": ("lane.config_schema", "print the config's JSON Schema, for editors that check lane files"),
    "gateway": ("lane.gateway", "run the lane gateway: color requests and forward them down their lane"),
    "sidecar": ("lane.sidecar", "run a lane sidecar beside one service instance"),
    "demo": ("lane.demo", "run the a -> b -> c demo topology on 127.0.0.1"),
    "demo-app": ("lane.demo_app", "run one demo application (used by the demo and the images)"),
    "inject": ("lane.inject", "add the lane sidecar container to Kubernetes Deployments"),
    "mesh": ("mesh_config.cli", "render, validate, verify and apply Istio lane config"),
    "loadtest": ("loadtest.cli", "prove under load (locust) that every request took its lane"),
}


def _available() -> dict[str, tuple[str, str]]:
    out = {}
    for name, (module, help_text) in COMMANDS.items():
        # The top-level package only: finding ``loadtest.cli`` would import ``loadtest`` itself.
        if importlib.util.find_spec(module.partition(".")[0]) is not None:
            out[name] = (module, help_text)
    return out


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand in *argv*, skipping the global options and their values."""
    globals_only = argparse.ArgumentParser(add_help=False)
    globals_only.add_argument("--log-level")
    _, rest = globals_only.parse_known_args(list(argv))
    return next((a for a in rest if not a.startswith("-")), None)


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lane", description="Full-link gray release (traffic lanes) from one YAML file.")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = _chosen_command(argv)
    for name, (module, help_text) in _available().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # only the chosen command pays for its import
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
