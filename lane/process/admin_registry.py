"""Which Prometheus registry a proxy's ``/metrics`` exposes (either core's admin listener)."""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry

__all__ = ["metrics_registry"]


def metrics_registry() -> CollectorRegistry:
    """The registry to expose: aggregated over worker processes when they share a multiprocess dir."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY
