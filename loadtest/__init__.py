"""``lane loadtest``: locust traffic that proves every request took the lane it should.

The pure parts (personas, expected paths, counters, verdict, reports) are importable anywhere;
the locust side (`loadtest.locustfile`, `users`, `plugin`, `webui`) only ever runs inside a locust
subprocess, so importing this package never imports locust.
"""

from .expected import Finding, RequestVerdict, verify
from .personas import Persona, build_personas
from .stats import LaneStats
from .summary import Summary, Thresholds, summarize

__all__ = [
    "Finding",
    "LaneStats",
    "Persona",
    "RequestVerdict",
    "Summary",
    "Thresholds",
    "build_personas",
    "summarize",
    "verify",
]
