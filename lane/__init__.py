"""lane: full-link gray release (traffic lanes) from one YAML file.

The library surface other teams import: the config model, the coloring rules and the
OpenTelemetry propagation of the lane (see `lane.propagation.propagator`, `lane.propagation.aiohttp_server`,
`lane.propagation.aiohttp_client`, `lane.propagation.instrumentor`).

``import lane`` stays light (no YAML, no RE2, no config loader, no rules): apps import it for the
propagator alone. The config and rule names below are loaded on first use (PEP 562).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from lane.core.errors import ConfigError, LaneError, UpstreamUnavailable
from lane.core.hops import Hop, encode_path, parse_path
from lane.core.tags import is_valid_lane, parse_lane
from lane.propagation.propagator import LanePropagator, current_lane, use_lane, with_lane, without_lane

if TYPE_CHECKING:
    from lane.core.config import LaneConfig
    from lane.core.config_load import load_config, parse_config
    from lane.core.rules import Coloring, RequestView, Rule, color

    __version__: str

_LAZY = {
    "LaneConfig": "core.config",
    "load_config": "core.config_load",
    "parse_config": "core.config_load",
    "Coloring": "core.rules",
    "RequestView": "core.rules",
    "Rule": "core.rules",
    "color": "core.rules",
}


def _version() -> str:
    """The installed distribution's version; importlib.metadata is loaded only when someone asks
    (it costs more than the rest of ``import lane``). A source tree that was never installed says so."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lane")
    except PackageNotFoundError:
        return "0+unknown"


def __getattr__(name: str) -> Any:
    """The config and rule names, imported when first asked for; ``__version__`` likewise."""
    if name == "__version__":
        globals()[name] = _version()
        return globals()[name]
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lane' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Coloring",
    "ConfigError",
    "Hop",
    "LaneConfig",
    "LaneError",
    "LanePropagator",
    "RequestView",
    "Rule",
    "UpstreamUnavailable",
    "__version__",
    "color",
    "current_lane",
    "encode_path",
    "is_valid_lane",
    "load_config",
    "parse_config",
    "parse_lane",
    "parse_path",
    "use_lane",
    "with_lane",
    "without_lane",
]
