"""Where a sidecar's aiohttp apps find its shared state (kept apart so the fast core never loads aiohttp)."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from lane.sidecar.state import Sidecar

__all__ = ["SIDECAR"]

SIDECAR: Final = web.AppKey("lane_sidecar", Sidecar)
