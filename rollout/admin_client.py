"""The proxies' admin listeners, as `lane rollout` uses them: who is a gateway, the share in force,
reloads, and ``/metrics``.

A gateway answers ``GET /lane/coloring`` (`lane.dataplane.coloring_view`); a sidecar answers 404 there
and is only read for its metrics. ``POST /lane/reload`` is a mutation: it carries ``Authorization:
Bearer`` when a token is given (``--admin-token-file`` or ``$LANE_ADMIN_TOKEN``, `lane.process.admin_access`),
so the rollout may run from another host than the proxies. Every failure is one line
(`AdminUnreachable`), never a traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from .errors import AdminUnreachable

__all__ = ["Admin", "AdminClient", "admin_url"]

TIMEOUT = aiohttp.ClientTimeout(total=5)


def admin_url(text: str) -> str:
    """``HOST:PORT`` or ``http://HOST:PORT[/]`` as ``http://HOST:PORT``."""
    text = text.strip().rstrip("/")
    return text if "://" in text else f"http://{text}"


@dataclass(frozen=True, slots=True)
class Admin:
    """One admin listener and what it is: a gateway (it reports its coloring rules) or a sidecar."""

    url: str
    gateway: bool


class AdminClient:
    """The admin calls of one rollout, over one aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, token: bytes | None) -> None:
        self.session = session
        self.headers = {"Authorization": f"Bearer {token.decode('ascii')}"} if token else {}

    async def _get(self, url: str) -> tuple[int, str]:
        try:
            async with self.session.get(url, timeout=TIMEOUT) as resp:
                return resp.status, await resp.text()
        except (TimeoutError, aiohttp.ClientError, UnicodeDecodeError) as exc:
            raise AdminUnreachable(f"admin {url}: {type(exc).__name__}: {exc or 'no answer'}") from None

    async def probe(self, url: str) -> Admin:
        """Whether *url* is a gateway's admin or a sidecar's (either must serve ``/metrics``)."""
        status, _ = await self._get(f"{url}/metrics")
        if status != 200:
            raise AdminUnreachable(
                f"admin {url}: GET /metrics answered {status}; is this a lane proxy's admin?"
            )
        status, _ = await self._get(f"{url}/lane/coloring")
        return Admin(url, gateway=status == 200)

    async def coloring(self, url: str) -> dict[str, Any]:
        """A gateway's rules in force (``GET /lane/coloring``)."""
        status, text = await self._get(f"{url}/lane/coloring")
        try:
            view = json.loads(text) if status == 200 else None
        except ValueError:
            view = None
        if not isinstance(view, dict) or not isinstance(view.get("rules"), list):
            raise AdminUnreachable(f"admin {url}: GET /lane/coloring answered {status} without the rules")
        return view

    async def reload(self, url: str) -> None:
        """``POST /lane/reload``; a refusal (the config rejected, 401/403) is an `AdminUnreachable`."""
        try:
            async with self.session.post(f"{url}/lane/reload", headers=self.headers, timeout=TIMEOUT) as resp:
                text = (await resp.text()).strip()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, UnicodeDecodeError) as exc:
            raise AdminUnreachable(
                f"admin {url}: reload failed: {type(exc).__name__}: {exc or 'no answer'}"
            ) from None
        if status != 200:
            raise AdminUnreachable(
                f"admin {url}: POST /lane/reload answered {status}: {' '.join(text.split())[:200]}"
            )

    async def metrics(self, url: str) -> str:
        status, text = await self._get(f"{url}/metrics")
        if status != 200:
            raise AdminUnreachable(f"admin {url}: GET /metrics answered {status}")
        return text
