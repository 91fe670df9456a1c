"""lane: full-link gray release (traffic lanes) from one YAML file.

The library surface other teams import: the config model, the coloring rules and the
OpenTelemetry propagation of the lane (see `lane.propagation`, `lane.aiohttp_server`,
`lane.aiohttp_client`).
"""

from .config import LaneConfig, load_config, parse_config
from .errors import ConfigError, LaneError, UpstreamUnavailable
from .hops import Hop, encode_path, parse_path
from .rules import Coloring, RequestView, Rule, color
from .tags import is_valid_lane, parse_lane

__all__ = [
    "LaneConfig",
    "load_config",
    "parse_config",
    "ConfigError",
    "LaneError",
    "UpstreamUnavailable",
    "Hop",
    "encode_path",
    "parse_path",
    "Coloring",
    "RequestView",
    "Rule",
    "color",
    "is_valid_lane",
    "parse_lane",
]
