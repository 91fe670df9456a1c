"""The name and host rules Kubernetes and Istio apply to what `lane mesh render` emits.

Checked when the config is read, so ``lane check`` and ``lane mesh render`` refuse what
``kubectl apply`` (the API server's name validation, Istio's webhook) would refuse later:

* object names (the Gateway's ``mesh.gateway.name``) are DNS-1123 subdomains, namespaces are
  DNS-1123 labels -- lower case, digits and ``-`` (``.`` between labels of a subdomain);
* hosts follow Istio's ``ValidateWildcardDomain``: at most 255 characters, dot-separated labels
  of letters, digits and ``-`` (no ``_``), each at most 63 long, optionally one leading ``*``
  label (Gateway hosts only), and never a port (a Gateway host with ``:80`` is refused by the
  webhook; a service's port is its ``port`` key).

Each function returns None for a good value, else the problem as a short phrase.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["gateway_host_problem", "label_problem", "service_host_problem", "subdomain_problem"]

_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_HOST_LABEL: Final = re.compile(r"[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?")


def label_problem(value: str) -> str | None:
    """A DNS-1123 label (a namespace): ``[a-z0-9]([-a-z0-9]*[a-z0-9])?``, at most 63 characters."""
    if len(value) > 63 or not _LABEL.fullmatch(value):
        return f"expected a DNS-1123 label (lower-case letters, digits and '-', at most 63), got {value!r}"
    return None


def subdomain_problem(value: str) -> str | None:
    """A DNS-1123 subdomain (an object name): DNS-1123 labels joined by ``.``, at most 253 characters."""
    if len(value) > 253 or not all(len(p) <= 63 and _LABEL.fullmatch(p) for p in value.split(".")):
        return ("expected a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', at most 253), "
                f"got {value!r}")
    return None


def _host_problem(host: str, wildcard: bool) -> str | None:
    name, colon, port = host.rpartition(":")
    if colon and name and port.isdigit():
        return f"a host carries no port, got {host!r}"
    if len(host) > 255:
        return f"a host is at most 255 characters, got {len(host)}"
    rest = host.rstrip(".") if host != "." else host
    if wildcard and "*" in rest:
        if rest == "*":
            return None
        if not rest.startswith("*.") or "*" in rest[2:]:
            return f"a wildcard must be a whole first label ('*.example.com'), got {host!r}"
        rest = rest[2:]
    for label in rest.split("."):
        if len(label) > 63 or not _HOST_LABEL.fullmatch(label):
            return f"invalid host {host!r}: label {label!r} is not letters, digits and '-' (at most 63)"
    return None


def gateway_host_problem(host: str) -> str | None:
    """A Gateway server host: ``*``, ``*.example.com`` or ``shop.example.com``, without a port."""
    if "/" in host:
        return f"expected a host without a namespace/ prefix, got {host!r}"
    return _host_problem(host, wildcard=True)


def service_host_problem(host: str) -> str | None:
    """A service host (a VirtualService and DestinationRule host): no wildcard, no port."""
    if "*" in host:
        return f"a service host cannot be a wildcard, got {host!r}"
    return _host_problem(host, wildcard=False)
