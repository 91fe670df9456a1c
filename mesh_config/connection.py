"""The cluster connection options every command that talks to the API server shares.

Apart from `mesh_config.kube` (which imports the `kubernetes` client) so that ``lane mesh render``
can offer ``--kubeconfig``/``--context``/``--server``/``--request-timeout`` for its optional
``--from-cluster`` and ``--check-endpoints`` while working without the ``k8s`` extra.
"""

from __future__ import annotations

import argparse

from lane.process.options import text_file

__all__ = ["add_connection_arguments"]


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster connection")
    group.add_argument("--kubeconfig", type=text_file,
                       help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    group.add_argument("--context", help="kubeconfig context to use (default: its current-context)")
    group.add_argument("--server", help="API server URL to talk to directly without credentials "
                                        "(e.g. `kubectl proxy` at http://127.0.0.1:8001)")
    group.add_argument("--request-timeout", type=float, default=30.0, help="seconds per API request (default 30)")
