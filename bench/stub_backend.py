"""The benchmark's backends, and the Envoy kind: ``direct_response`` listeners that check the lane.

The stubs must not be the bottleneck, and they share the two cores with the subjects, so the
cheapest stub is the fairest: nginx with one worker (`bench/nginx_stub.py`) is preferred; this
module's Envoy stubs (~80k req/s on 2 cores against ~200k for one nginx worker) are the fallback
where nginx is missing and cannot be installed. Both kinds are `Stubs`: one process playing every
``service@lane`` instance on its own port, and per-instance counts of right-lane and wrong-lane
answers. For the Envoy kind, each listener makes routing correctness observable *under load*
without slowing the load generator down:

* ``200 <service>@<lane>`` only when the request arrived with the tag header naming its own lane
  (``x-mse-tag: gray`` at a gray instance), so a proxy that routes right but tags wrong fails;
* ``421 Misdirected Request`` otherwise, which wrk counts as a status error.

Each listener has its own stat prefix (``stub_<service>_<lane>``), so the admin counters
``http.stub_a_gray.downstream_rq_2xx`` say how many requests reached that instance and were
right: the benchmark compares them with wrk's count (no free speed from misrouting).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import aiohttp
from envoy_proc import EnvoyProcess, envoy_counters

__all__ = ["STATUS_MISROUTED", "EnvoyStubs", "Instance", "InstanceCounts", "Stubs", "instance_counts",
           "stub_bootstrap"]

STATUS_MISROUTED: Final = 421
_HCM_TYPE: Final = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER: Final = {"name": "envoy.filters.http.router",
                  "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


@dataclass(frozen=True, slots=True, order=True)
class Instance:
    """One ``service@lane`` stub; ``grpc``: it answers gRPC unary calls over h2c (nginx stubs only)."""

    service: str
    lane: str
    grpc: bool = False

    @property
    def listener(self) -> str:
        return f"{self.service}-{self.lane}" + "-grpc" * self.grpc

    @property
    def stat_prefix(self) -> str:
        return f"stub_{self.service}_{self.lane}" + "_grpc" * self.grpc

    def __str__(self) -> str:
        return f"{self.service}@{self.lane}" + "/grpc" * self.grpc


@dataclass(frozen=True, slots=True)
class InstanceCounts:
    """Answers of one stub instance: right lane (2xx) and wrong lane or tag (4xx)."""

    ok: int
    refused: int

    def __sub__(self, other: InstanceCounts) -> InstanceCounts:
        return InstanceCounts(self.ok - other.ok, self.refused - other.refused)


def _listener(instance: Instance, tag_header: str) -> dict[str, Any]:
    right = {"match": {"prefix": "/", "headers": [{"name": tag_header, "string_match": {"exact": instance.lane}}]},
             "direct_response": {"status": 200, "body": {"inline_string": f"{instance}\n"}}}
    wrong = {"match": {"prefix": "/"},
             "direct_response": {"status": STATUS_MISROUTED,
                                 "body": {"inline_string": f"misrouted: this is {instance}\n"}}}
    hcm = {"@type": _HCM_TYPE, "stat_prefix": instance.stat_prefix, "http_filters": [_ROUTER],
           "route_config": {"name": instance.listener,
                            "virtual_hosts": [{"name": "stub", "domains": ["*"], "routes": [right, wrong]}]}}
    return {"name": instance.listener,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}


def stub_bootstrap(instances: Iterable[Instance], tag_header: str) -> dict[str, Any]:
    """An Envoy bootstrap with one checking listener per instance (admin and listeners on port 0)."""
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [_listener(i, tag_header) for i in sorted(set(instances))]},
    }


async def instance_counts(session: aiohttp.ClientSession, stubs: EnvoyProcess,
                          instances: Iterable[Instance]) -> Mapping[Instance, InstanceCounts]:
    """Each instance's 2xx and 4xx answer counts so far, from the stub Envoy's admin counters."""
    counters = await envoy_counters(session, stubs.admin, "^http\\.stub_.*\\.downstream_rq_[24]xx$")
    return {i: InstanceCounts(counters.get(f"http.{i.stat_prefix}.downstream_rq_2xx", 0),
                              counters.get(f"http.{i.stat_prefix}.downstream_rq_4xx", 0))
            for i in instances}


class Stubs(Protocol):
    """Stub backends of either kind, as the benchmark uses them."""

    @property
    def kind(self) -> str:
        """What plays the stubs, for the report (e.g. ``nginx 1.22.1, 1 worker``)."""
        ...

    @property
    def pid(self) -> int:
        """The top-level process (its children are found when measuring)."""
        ...

    def address(self, instance: Instance) -> str:
        """``127.0.0.1:PORT`` of *instance*."""
        ...

    async def counts(self, session: aiohttp.ClientSession) -> Mapping[Instance, InstanceCounts]:
        """Every instance's right-lane and wrong-lane answers so far (complete up to this call)."""
        ...


@dataclass(frozen=True, slots=True)
class EnvoyStubs:
    """The fallback stubs: one Envoy (`stub_bootstrap`), counted on its admin counters."""

    envoy: EnvoyProcess
    instances: tuple[Instance, ...]
    version: str

    @property
    def kind(self) -> str:
        return f"Envoy {self.version} direct_response, 2 workers"

    @property
    def pid(self) -> int:
        return self.envoy.pid

    def address(self, instance: Instance) -> str:
        return f"127.0.0.1:{self.envoy.listeners[instance.listener]}"

    async def counts(self, session: aiohttp.ClientSession) -> Mapping[Instance, InstanceCounts]:
        return await instance_counts(session, self.envoy, self.instances)
