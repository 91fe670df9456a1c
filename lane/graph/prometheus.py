"""The lane graph's readings from a Prometheus server instead of the proxies' admin listeners.

Prometheus already scrapes every proxy (docker/k8s/overlays/observability annotates them), so one
instant query gives the same series the admins would, each labelled with the ``instance`` it was
scraped from: grouped by ``(job, instance)`` they are read exactly like one proxy's ``/metrics``
(`lane.graph.model.read_samples`). The two readings of the rates are two instant queries ``window``
seconds apart in Prometheus's own time, so nothing waits; pick a window of a few scrape intervals.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from lane.graph.model import Graph, Reading, Sample, build_graph, read_samples

__all__ = ["QUERY", "collect_prometheus", "read_prometheus"]

QUERY = '{__name__=~"lane_requests_total|lane_request_duration_seconds_bucket|lane_outbound_lane_source_total"}'


def _samples(document: Any) -> dict[tuple[str, str], list[Sample]]:
    if not isinstance(document, dict) or document.get("status") != "success":
        raise ValueError("not a successful Prometheus query answer")
    result = document["data"]["result"]
    proxies: dict[tuple[str, str], list[Sample]] = {}
    for series in result:
        labels = {str(k): str(v) for k, v in series["metric"].items()}
        name = labels.pop("__name__", "")
        value = float(series["value"][1])
        proxies.setdefault((labels.get("job", ""), labels.get("instance", "")), []).append((name, labels, value))
    return proxies


async def read_prometheus(session: aiohttp.ClientSession, url: str, at: float) -> Reading:
    """Every proxy's lane series at time *at* (seconds since the epoch), summed into one `Reading`."""
    try:
        async with session.get(f"{url}/api/v1/query", params={"query": QUERY, "time": f"{at:.3f}"}) as resp:
            document = await resp.json(content_type=None)
        proxies = _samples(document)
    except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError, IndexError):
        return Reading(unreachable=[url])
    total = Reading()
    for samples in proxies.values():
        total.add(read_samples(samples))
    return total


async def collect_prometheus(url: str, window: float, timeout: float = 10.0) -> Graph:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        now = time.time()
        reading = await read_prometheus(session, url, now)
        if window <= 0 or reading.unreachable:
            return build_graph(reading)
        return build_graph(reading, await read_prometheus(session, url, now - window), window)
