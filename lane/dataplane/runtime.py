"""What one proxy process holds across requests: its config source, its registry, and reload.

Reload (SIGHUP or ``POST /lane/reload``) parses the file again; a broken file is rejected with one
clear log line and the old config stays. A good one is swapped in atomically: requests that
started before keep the snapshot they took, new requests see the new config. Components that
keep their own tuning (the trace cache) subscribe with `on_swap`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lane.core.config import LaneConfig
from lane.core.config_load import load_config
from lane.core.errors import ConfigError
from lane.dataplane.registry import Registry
from lane.telemetry.metrics import RELOADS, ejection_hook

__all__ = ["ReloadResult", "Runtime"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    message: str


class Runtime:
    def __init__(self, config: LaneConfig, path: str | Path | None) -> None:
        self.path = None if path is None else Path(path)
        self.registry = Registry(config, on_eject=ejection_hook(lambda: self.registry.config))
        self._subscribers: list[Callable[[LaneConfig], None]] = []

    @property
    def config(self) -> LaneConfig:
        return self.registry.config

    def on_swap(self, callback: Callable[[LaneConfig], None]) -> None:
        self._subscribers.append(callback)

    def reload(self) -> ReloadResult:
        if self.path is None:
            return ReloadResult(False, "no config file to reload (running on the embedded config)")
        try:
            config = load_config(self.path)
        except ConfigError as exc:
            RELOADS.labels(result="rejected").inc()
            log.error("config reload rejected, keeping the previous config: %s", exc)
            return ReloadResult(False, f"rejected, keeping the previous config: {exc}")
        self.registry.swap(config)
        for callback in self._subscribers:
            try:
                callback(config)
            except Exception:
                log.exception("config reload subscriber failed")
        RELOADS.labels(result="ok").inc()
        log.info("config reloaded from %s", self.path)
        return ReloadResult(True, f"reloaded {self.path}")
