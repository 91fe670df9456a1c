"""lane: full-link gray release (traffic lanes) from one YAML file.

The library surface other teams import: the config model, the coloring rules and the
OpenTelemetry propagation of the lane (see `lane.propagation`, `lane.aiohttp_server`,
`lane.aiohttp_client`).
"""

from .config import LaneConfig, load_config, parse_config
from .errors import ConfigError, LaneError, UpstreamUnavailable
from .hops import Hop, encode_path, parse_path
from .propagation import LanePropagator, current_lane, use_lane, with_lane, without_lane
from .rules import Coloring, RequestView, Rule, color
from .tags import is_valid_lane, parse_lane

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
