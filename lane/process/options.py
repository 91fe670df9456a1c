"""Command-line values every lane command shares, checked while parsing (one-line errors, exit 2).

Argparse types (ports, positive numbers, durations, DNS labels, log levels, readable files,
executables, listen addresses) and the options every proxy process takes (`add_server_arguments`).
Light on purpose: ``lane mesh``, ``lane loadtest`` and ``lane rollout`` use these without loading
the data plane.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from lane.core.dns_names import label_problem
from lane.core.endpoint import Endpoint, parse_endpoint

__all__ = [
    "DEFAULT_DRAIN_SECONDS",
    "add_server_arguments",
    "dns_label",
    "executable",
    "host_port",
    "log_level",
    "port",
    "positive_int",
    "positive_number",
    "seconds",
    "text_file",
]

DEFAULT_DRAIN_SECONDS = 20.0


def port(text: str) -> int:
    """A TCP port, 0 (pick a free one) to 65535."""
    if not text.strip().isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return int(text)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_number(text: str) -> float:
    """A finite number above 0 (a rate)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}") from None
    if not 0 < value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def seconds(text: str) -> float:
    """A duration in seconds, 0 or more (a negative drain deadline meant none, silently)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (0 or more), got {text!r}") from None
    if not value >= 0 or value == float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected seconds (0 or more), got {text!r}")
    return value


def dns_label(text: str) -> str:
    """A Kubernetes namespace name (a DNS-1123 label)."""
    problem = label_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def log_level(text: str) -> str:
    """A `logging` level name, any case (``debug``, ``INFO``, ...), as the upper-case name."""
    name = text.strip().upper()
    if name not in logging.getLevelNamesMapping() or name == "NOTSET":
        raise argparse.ArgumentTypeError(f"expected a log level (DEBUG, INFO, WARNING, ERROR, CRITICAL), got {text!r}")
    return name


def text_file(text: str) -> str:
    """A readable UTF-8 file (or ``-`` for stdin), checked while parsing so that a missing, binary or
    directory argument is refused before the command starts anything; returns the path as given."""
    if text == "-":
        return text
    try:
        Path(text).read_bytes().decode("utf-8")
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {text}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{text}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    return text


def executable(text: str) -> str:
    """A program to run: a path to an executable file, or a name found on $PATH."""
    if shutil.which(text) is None:
        raise argparse.ArgumentTypeError(f"{text}: no such executable (a path, or a program on $PATH)")
    return text


def host_port(text: str) -> Endpoint:
    """A listen address, ``HOST:PORT`` (``[v6]:PORT``, or ``:PORT`` for all interfaces)."""
    try:
        return parse_endpoint(text, any_host="0.0.0.0")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_server_arguments(parser: argparse.ArgumentParser, *, workers_help: str | None = None) -> None:
    """Options every proxy command shares: workers, drain deadline, ready file."""
    parser.add_argument("--workers", type=positive_int, default=1,
                        help=workers_help or "processes serving the same port via SO_REUSEPORT (default 1)")
    parser.add_argument("--drain-seconds", type=seconds, default=DEFAULT_DRAIN_SECONDS,
                        help=f"on SIGTERM, how long in-flight requests may finish (default {DEFAULT_DRAIN_SECONDS:g})")
    parser.add_argument("--ready-file", help="write the bound addresses as JSON to this file once listening")
    parser.add_argument("--access-log", action="store_true",
                        help="log one line per request served (lane.access, INFO); off by default, it costs "
                        "a formatted line per request")
