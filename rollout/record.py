"""What a rollout did, for people and scripts: progress lines, the JSON record, the SVG timeline.

The record is rewritten (atomically) after every judged interval, so a crashed run leaves every
point it judged; a rerun with the same ``--record`` for the same config and lane continues the
same record (its points, then the new run's), so the timeline shows the whole rollout.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .analysis import Judgement
from .share_edit import write_atomically
from .timeline_svg import render_timeline

__all__ = ["Point", "Record", "progress_line"]


@dataclass(frozen=True, slots=True)
class Point:
    """One judged interval: when (seconds since the record started), the share, the verdict and figures."""

    t: float
    share: int
    judgement: Judgement

    def as_dict(self) -> dict[str, Any]:
        entry = self.judgement.checks[0]
        return {
            "t": round(self.t, 3),
            "share": self.share,
            **self.judgement.as_dict(),
            "error_rate": entry.error_rate,
            "base_error_rate": entry.base_error_rate,
            "p99": entry.p99,
            "base_p99": entry.base_p99,
        }


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}ms"


def progress_line(step: int, steps: int, share: int, lane: str, judgement: Judgement) -> str:
    """``step 2/5  5%  entry gray 61 req err 0.0% (base 0.0%) p99 4ms (base 3ms)  c@gray err ...  pass``."""
    parts = [f"step {step}/{steps}", f"{share:>3}%"]
    for check in judgement.checks:
        name = "entry" if check.where == "entry" else f"{check.where}@{lane}"
        parts.append(
            f"{name} {check.requests} req err {_pct(check.error_rate)} (base {_pct(check.base_error_rate)})"
            f" p99 {_ms(check.p99)} (base {_ms(check.base_p99)})"
        )
    verdict = str(judgement.verdict.value) + (f": {judgement.reason}" if judgement.reason else "")
    return "  ".join(parts) + "  " + verdict


@dataclass(slots=True)
class Record:
    """The JSON record at *path* (and its SVG beside it, or at *svg*)."""

    path: Path | None
    svg: Path | None
    head: dict[str, Any]
    points: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    out: TextIO = field(default_factory=lambda: sys.stdout)

    def resume(self) -> None:
        """Continue the record already at `path` when it is the same config and lane's."""
        if self.path is None or not self.path.is_file():
            return
        try:
            old = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(old, dict) and all(old.get(k) == self.head[k] for k in ("config", "lane", "rule")):
            self.started = float(old.get("started", self.started))
            self.points = list(old.get("points", []))
            self.events = list(old.get("events", []))

    def event(self, kind: str, share: int, message: str) -> None:
        self.events.append(
            {"t": round(time.time() - self.started, 3), "event": kind, "share": share, "message": message}
        )
        print(f"{kind}: {message}", file=self.out, flush=True)
        self.save()

    def point(self, share: int, judgement: Judgement, step: int, steps: int) -> None:
        self.points.append(Point(time.time() - self.started, share, judgement).as_dict())
        print(progress_line(step, steps, share, self.head["lane"], judgement), file=self.out, flush=True)
        self.save()

    def save(self, outcome: str | None = None, reason: str = "") -> None:
        document = {**self.head, "started": self.started, "points": self.points, "events": self.events}
        if outcome is not None:
            document |= {"outcome": outcome, "reason": reason}
        if self.path is not None:
            write_atomically(self.path, json.dumps(document, indent=2) + "\n")
        if self.svg is not None:
            write_atomically(self.svg, render_timeline(document))
