"""The Gateway the entry service is exposed on (plain HTTP on the configured port and hosts).

``HTTP`` at a gateway serves HTTP/1.1 and h2c alike (Istio's protocol selection; its gateway
listeners detect the codec per connection), so gRPC clients reach a ``protocol: grpc`` entry
through the same server: the port's protocol stays ``HTTP``.
"""

from __future__ import annotations

from collections.abc import Mapping

from lane.core.config import LaneConfig

from .model import NETWORKING_V1, GatewaySpec, ObjectMeta, Port, Resource, Server

__all__ = ["gateway"]


def gateway(config: LaneConfig, namespace: str, labels: Mapping[str, str]) -> Resource:
    """The Gateway named ``mesh.gateway.name``, selecting the ingress gateway pods by ``selector``."""
    gw = config.mesh.gateway
    server = Server(port=Port(number=gw.port, name=f"http-{gw.port}", protocol="HTTP"), hosts=gw.hosts)
    return Resource(
        api_version=NETWORKING_V1,
        kind="Gateway",
        metadata=ObjectMeta(name=gw.name, namespace=namespace, labels=labels),
        spec=GatewaySpec(selector=gw.selector, servers=(server,)),
    )
