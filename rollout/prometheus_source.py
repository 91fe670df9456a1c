"""The same per-lane figures read from a Prometheus server (``--prometheus URL``) instead of each proxy.

Two instant queries through the HTTP API (``GET /api/v1/query``) give what every scraped proxy had
counted, summed by the labels the analysis needs: the requests by response code, and the duration
buckets. A step's window is the difference of two such readings, exactly as with the proxies' own
``/metrics`` (`metrics_window.Snapshot.since`), so the verdicts mean the same; Prometheus only adds
its scrape interval of lag, so ``--interval`` should be several scrape intervals long. Only the
label names of today's proxies are read (``destination_service``, ``response_code``).
"""

from __future__ import annotations

import json
from typing import Any, Final

import aiohttp

from .errors import AdminUnreachable
from .metrics_window import Key, Snapshot, Tally

__all__ = ["BUCKETS_QUERY", "REQUESTS_QUERY", "prometheus_snapshot", "query_vector"]

_BY: Final = "proxy, destination_service, requested_lane, served_lane"
REQUESTS_QUERY: Final = f"sum by ({_BY}, response_code) (lane_requests_total)"
BUCKETS_QUERY: Final = f"sum by ({_BY}, le) (lane_request_duration_seconds_bucket)"
TIMEOUT: Final = aiohttp.ClientTimeout(total=10)


async def query_vector(session: aiohttp.ClientSession, url: str, query: str) -> list[dict[str, Any]]:
    """The samples of an instant *query* (``GET /api/v1/query``); `AdminUnreachable` unless Prometheus answers them."""
    try:
        async with session.get(f"{url}/api/v1/query", params={"query": query}, timeout=TIMEOUT) as resp:
            text = await resp.text()
            status = resp.status
    except (TimeoutError, aiohttp.ClientError, UnicodeDecodeError) as exc:
        raise AdminUnreachable(f"prometheus {url}: {type(exc).__name__}: {exc or 'no answer'}") from None
    try:
        body = json.loads(text)
        result = body["data"]["result"] if body.get("status") == "success" else None
    except (ValueError, KeyError, TypeError, AttributeError):
        result = None
    if status != 200 or not isinstance(result, list):
        raise AdminUnreachable(f"prometheus {url}: the query API answered {status}: {' '.join(text.split())[:200]}")
    return result


def _key(metric: dict[str, str]) -> Key:
    return (metric.get("proxy", ""), metric.get("destination_service", ""), metric.get("requested_lane", ""),
            metric.get("served_lane", ""))


async def prometheus_snapshot(session: aiohttp.ClientSession, url: str) -> Snapshot:
    """What the Prometheus server at *url* holds now, summed per row (`AdminUnreachable` when it cannot say)."""
    rows: dict[Key, Tally] = {}
    for sample in await query_vector(session, url, REQUESTS_QUERY):
        value = float(sample["value"][1])
        tally = rows.setdefault(_key(sample["metric"]), Tally())
        tally.requests += value
        code = sample["metric"].get("response_code", "0")
        if code.isdigit() and int(code) >= 500:
            tally.errors += value
    buckets = await query_vector(session, url, BUCKETS_QUERY)
    for sample in buckets:
        tally = rows.setdefault(_key(sample["metric"]), Tally())
        le = float(sample["metric"].get("le", "+Inf"))
        tally.buckets[le] = tally.buckets.get(le, 0.0) + float(sample["value"][1])
    return Snapshot(rows, bool(buckets))
