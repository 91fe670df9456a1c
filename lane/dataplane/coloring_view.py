"""``GET /lane/coloring``: the coloring rules a gateway applies right now, as JSON.

Read-only, on every gateway admin listener (one process, or the ``--workers`` supervisor's). Why:
`lane rollout` must continue after a crash from the share *in force*, which only the running
gateway knows (the file may be a step ahead if the crash came between writing it and the reload).
"""

from __future__ import annotations

from lane.core.config import LaneConfig

__all__ = ["COLORING_PATH", "coloring_view"]

COLORING_PATH = "/lane/coloring"


def coloring_view(config: LaneConfig) -> dict[str, object]:
    """The rules in order, each with its lane, number of match conditions and percentage (None: no share)."""
    rules = [
        {
            "name": rule.name,
            "lane": rule.lane,
            "conditions": len(rule.conditions),
            "percent": None if rule.percentage is None else rule.percentage.percent,
            "sticky": rule.percentage is not None and rule.percentage.key is not None,
        }
        for rule in config.rules
    ]
    return {"config": config.source, "default_lane": config.default_lane, "rules": rules}
