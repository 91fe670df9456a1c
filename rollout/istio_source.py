"""The per-lane figures of an Istio mesh, from Istio's standard metrics in a Prometheus server (``--mesh``).

In a mesh the proxies are Istio's: what they count is ``istio_requests_total`` and the histogram
``istio_request_duration_milliseconds``, labelled by the *destination* (the workload that served) and
the response code. Which lane served is the workload's canonical revision,
``destination_canonical_revision``: Istio takes the pod's ``service.istio.io/canonical-revision``
label, else ``app.kubernetes.io/version``, else ``version``, else ``latest`` (istio's
pkg/kube/labels `CanonicalService`). With lane's default ``label_key: version`` that is the lane of
the instance; `rollout.mesh_target` checks every lane pod before the rollout starts.

Only ``reporter="destination"`` series are read: each request counted once, by the sidecar of the
pod that served it (Flagger's Istio checks read the same), summed by the destination Service (name
and namespace), revision, and response code or ``le``. Series of Services the config does not name
are left out, so other apps of the mesh, and the same service names in another namespace, do not count.

What Istio's metrics cannot say is the lane a request *asked* for: a request colored gray that a
service without gray pods served in base looks like any base request. So each row is keyed
(``inbound``, service, revision, revision): every service that served the lane is checked against
its default-lane pods, as `rollout.analysis` does with lane's sidecars, and the entry check is the
entry service's (its lane pods against its default-lane pods), which must therefore have the lane
(`mesh_target` refuses otherwise). As with `prometheus_source`, a step's window is the difference
of two readings, so ``--interval`` should be several scrape intervals long.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import aiohttp

from lane.core.config import LaneConfig
from mesh_config.hosts import service_namespace

from .metrics_window import Key, Snapshot, Tally
from .prometheus_source import query_vector

__all__ = ["BUCKETS_QUERY", "REQUESTS_QUERY", "istio_snapshot", "services_by_destination", "snapshot_of"]

_BY: Final = "destination_service_namespace, destination_service_name, destination_canonical_revision"
_WHERE: Final = '{reporter="destination"}'
REQUESTS_QUERY: Final = f"sum by ({_BY}, response_code) (istio_requests_total{_WHERE})"
BUCKETS_QUERY: Final = f"sum by ({_BY}, le) (istio_request_duration_milliseconds_bucket{_WHERE})"


def _service_name(host: str) -> str:
    """The Kubernetes Service name of a host (``c`` or ``c.shop.svc.cluster.local`` -> ``c``)."""
    parts = host.split(".")
    return parts[0] if len(parts) == 1 or (len(parts) >= 3 and parts[2] == "svc") else host


def services_by_destination(config: LaneConfig, namespace: str) -> dict[tuple[str, str], str]:
    """(Service namespace, Service name), as Istio labels a destination -> the config's service name."""
    return {
        (service_namespace(svc, namespace), _service_name(svc.host)): svc.name for svc in config.services.values()
    }


def snapshot_of(
    config: LaneConfig, namespace: str, requests: Iterable[Mapping[str, Any]], buckets: Iterable[Mapping[str, Any]]
) -> Snapshot:
    """The rows of the two queries' samples: (``inbound``, service, revision, revision), plus the entry
    service's as (``gateway``, ...), which is what `analysis.judge` reads as the entry."""
    services = services_by_destination(config, namespace)
    rows: dict[Key, Tally] = {}

    def tallies(labels: Mapping[str, str]) -> list[Tally]:
        service = services.get(
            (labels.get("destination_service_namespace", ""), labels.get("destination_service_name", ""))
        )
        if service is None:
            return []
        revision = labels.get("destination_canonical_revision", "")
        keys = [("inbound", service, revision, revision)]
        if service == config.entry:
            keys.append(("gateway", service, revision, revision))
        return [rows.setdefault(key, Tally()) for key in keys]

    for sample in requests:
        value = float(sample["value"][1])
        code = str(sample["metric"].get("response_code", "0"))
        for tally in tallies(sample["metric"]):
            tally.requests += value
            if code.isdigit() and int(code) >= 500:
                tally.errors += value
    seen = False
    for sample in buckets:
        seen = True
        le = float(sample["metric"].get("le", "+Inf")) / 1000  # Istio's buckets are in milliseconds
        for tally in tallies(sample["metric"]):
            tally.buckets[le] = tally.buckets.get(le, 0.0) + float(sample["value"][1])
    return Snapshot(rows, seen)


async def istio_snapshot(session: aiohttp.ClientSession, url: str, config: LaneConfig, namespace: str) -> Snapshot:
    """What Istio's sidecars had counted, as the Prometheus server at *url* holds it now (`AdminUnreachable`
    when it cannot say, ``ValueError`` for samples that are not numbers)."""
    requests = await query_vector(session, url, REQUESTS_QUERY)
    buckets = await query_vector(session, url, BUCKETS_QUERY)
    try:
        return snapshot_of(config, namespace, requests, buckets)
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ValueError(f"prometheus {url}: a sample without its value: {exc!r}") from None
