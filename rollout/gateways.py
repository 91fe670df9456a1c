"""Lane's own gateways as the place a share is put in force: their admin listeners, and the figures
of every proxy (their ``/metrics``, or a Prometheus server scraping them).

The runner (`rollout.runner`) writes the share into the config file; `GatewayTarget.push` makes the
gateways load it (``POST /lane/reload`` on each), `GatewayTarget.shares` asks each gateway which share
it applies (``GET /lane/coloring``), `GatewayTarget.snapshot` sums what every proxy counted. The
Istio counterpart is `rollout.mesh_target`.
"""

from __future__ import annotations

import logging

from .admin_client import Admin, AdminClient
from .errors import AdminUnreachable, RolloutInputError
from .metrics_window import Snapshot, parse_metrics
from .prometheus_source import prometheus_snapshot

__all__ = ["GatewayTarget"]

log = logging.getLogger(__name__)


class GatewayTarget:
    """The gateways (and sidecars) behind ``--admin``, probed once by `open`."""

    def __init__(
        self, client: AdminClient, admins: list[Admin], *, lane: str, rule: str, config: str, prometheus: str | None
    ) -> None:
        self.client = client
        self.admins = admins
        self.gateways = [a.url for a in admins if a.gateway]
        self.lane = lane
        self.rule = rule
        self.config = config
        self.prometheus = prometheus
        self.where = "on the gateways"

    @classmethod
    async def open(
        cls, client: AdminClient, urls: tuple[str, ...], *, lane: str, rule: str, config: str, prometheus: str | None
    ) -> GatewayTarget:
        """Probe every admin; `RolloutInputError` when none of them is a gateway's."""
        admins = [await client.probe(url) for url in urls]
        if not any(a.gateway for a in admins):
            raise RolloutInputError(
                "none of the --admin listeners is a gateway's (GET /lane/coloring answered on "
                f"none of {', '.join(urls)}): the share is set on gateways"
            )
        return cls(client, admins, lane=lane, rule=rule, config=config, prometheus=prometheus)

    async def shares(self) -> list[int]:
        """The share each gateway applies now (``GET /lane/coloring``)."""
        shares = []
        for url in self.gateways:
            view = await self.client.coloring(url)
            found = [
                r.get("percent")
                for r in view["rules"]
                if isinstance(r, dict) and r.get("name") == self.rule and r.get("lane") == self.lane
            ]
            if len(found) != 1 or not isinstance(found[0], int):
                raise RolloutInputError(
                    f"gateway {url} has no percentage rule {self.rule} for lane "
                    f"{self.lane} in force; is it running {self.config}?"
                )
            shares.append(found[0])
        return shares

    async def push(self, *, best_effort: bool = False) -> None:
        """Reload every gateway from the file; the first refusal raises `AdminUnreachable`, unless
        *best_effort* (putting an old share back), where each refusal is logged and the rest still reloaded."""
        for url in self.gateways:
            try:
                await self.client.reload(url)
            except AdminUnreachable as exc:
                if not best_effort:
                    raise
                log.error("%s", exc)

    async def snapshot(self) -> Snapshot:
        """Every admin's metrics summed, or the Prometheus server's (`AdminUnreachable`, ``ValueError``)."""
        if self.prometheus is not None:
            return await prometheus_snapshot(self.client.session, self.prometheus)
        return parse_metrics([await self.client.metrics(a.url) for a in self.admins])
