"""Where something listens: ``host:port`` as the config, the command line and the hop record spell it.

One type (`Endpoint`) and one parser (`parse_endpoint`) for instance addresses in the config and for
the addresses proxies listen on (``--listen``, ``--admin``, ``--app``): both print IPv6 hosts in
brackets, as a URL and Envoy do.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Endpoint", "parse_endpoint"]


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(text: str, *, any_host: str | None = None) -> Endpoint:
    """``HOST:PORT`` (``[v6]:PORT``) as an `Endpoint`; raises ValueError saying what was expected.

    With *any_host* (a listen address), ``:PORT`` means that host and port 0 (pick one) is allowed;
    without it (an instance to connect to) both a host and a port from 1 are required.
    """
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    lowest = 0 if any_host is not None else 1
    if not sep or not port.isdigit() or not lowest <= int(port) < 65536 or not (host or any_host):
        raise ValueError(f"expected {'HOST:PORT' if any_host is not None else 'host:port'}, got {text!r}")
    return Endpoint(host or any_host or "", int(port))
