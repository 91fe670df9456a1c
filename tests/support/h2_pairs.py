"""Two in-memory HTTP/2 connections with their prefaces exchanged: the start of every differential test that
runs one of lane's lean ``h2`` connections beside ``h2``'s own against the same peer."""

from __future__ import annotations

from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection

__all__ = ["GRPC_REQUEST", "connected_pair"]

# The head of a gRPC unary call, as bytes pairs.
GRPC_REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/p.S/M"),
                (b"content-type", b"application/grpc"), (b"te", b"trailers")]


def connected_pair(kind: type[H2Connection], client_side: bool, *,
                   logger: Any = None) -> tuple[H2Connection, H2Connection]:
    """A connection of *kind* in lane's configuration (no h2 header validation or normalisation: lane checks
    heads itself) and a plain ``h2`` peer on the other side, their prefaces and settings exchanged."""
    conn = kind(H2Configuration(client_side=client_side, header_encoding=None, validate_outbound_headers=False,
                                normalize_outbound_headers=False, validate_inbound_headers=False, logger=logger))
    conn.initiate_connection()
    peer = H2Connection(H2Configuration(client_side=not client_side, header_encoding=None))
    peer.initiate_connection()
    peer.receive_data(conn.data_to_send())
    conn.receive_data(peer.data_to_send())
    peer.receive_data(conn.data_to_send())
    return conn, peer
