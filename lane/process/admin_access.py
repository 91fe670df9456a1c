"""Who may change a proxy through its admin listener: read-only for everyone, mutations for loopback or a token.

Why: the shipped manifests bind the admin listener to ``0.0.0.0`` because the kubelet's probes,
Prometheus and the load test's workers reach it on the pod's address. Reading (``GET``/``HEAD``:
``/metrics``, ``/healthz``, ``/lane/instances``, ``/lane/carriers``, any view added later) stays
open to them. Every other method changes something (``POST /lane/reload``) and is refused unless

* an ``Origin`` header, when a browser sent one, is the listener's own origin (``http://`` + Host),
  and ``Sec-Fetch-Site`` is not ``cross-site``/``same-site``: no cross-site request forgery;
* and either the request carries ``Authorization: Bearer <token>`` with the token of
  ``--admin-token-file`` or ``$LANE_ADMIN_TOKEN`` (compared in constant time), or the peer is on
  loopback (``kubectl exec``/``port-forward``, a process in the pod) *and* the ``Host`` header names
  a loopback address (``localhost``, ``127.0.0.0/8``, ``::1``) or the listener's own address, so a
  browser on the same machine tricked by DNS rebinding (``Host: attacker.example``) is refused.

The class of a request follows from its method alone, so a new read-only view needs no entry in
any table and a new mutating route is protected by default. Pure functions: both admin
implementations (`lane.process.admin` on aiohttp, `lane.process.admin_h1` on the fast core) and the ``--workers``
supervisor's admin ask `AdminAccess.refusal` the same question.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "READ_ONLY_METHODS",
    "TOKEN_ENV",
    "AdminAccess",
    "Refusal",
    "add_admin_arguments",
    "admin_access",
    "token_file",
]

READ_ONLY_METHODS: Final = frozenset({"GET", "HEAD"})
TOKEN_ENV: Final = "LANE_ADMIN_TOKEN"
MAX_TOKEN_BYTES: Final = 4096
_ALLOWED_FETCH_SITES: Final = frozenset({"same-origin", "none"})


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request may not change anything: the status to answer and a one-line reason."""

    status: int  # 403: foreign Host/Origin; 401: neither loopback nor the right token
    reason: str


def _is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _host_name(authority: str) -> tuple[str, str | None]:
    """``host[:port]`` or ``[v6][:port]`` as (lower-case host, port or None)."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return "", None
        rest = authority[end + 1:]
        return authority[1:end], rest[1:] if rest.startswith(":") else None
    host, colon, port = authority.partition(":")
    return host, port if colon else None


def _host_allowed(host_header: str | None, local: tuple[str, int] | None) -> bool:
    if not host_header:
        return False
    host, port = _host_name(host_header)
    if host == "localhost" or _is_loopback(host):
        return True
    if local is None:
        return False
    local_host = local[0].split("%", 1)[0].lower()
    local_host = local_host.removeprefix("::ffff:")
    return host == local_host and port in (None, str(local[1]))


@dataclass(frozen=True, slots=True)
class AdminAccess:
    """The admin listener's policy: read-only requests pass; mutations need loopback or *token*."""

    token: bytes | None = None

    def refusal(self, method: str, peer: str | None, local: tuple[str, int] | None,
                headers: Mapping[str, str]) -> Refusal | None:
        """None when the request may proceed, else why not. *local* is the listener's own (address, port)."""
        if method in READ_ONLY_METHODS:
            return None
        host = headers.get("Host")
        origin = headers.get("Origin")
        if origin is not None and origin.strip().lower() != f"http://{str(host).strip().lower()}":
            return Refusal(403, f"lane admin: {method} refused: Origin {origin[:80]!r} is another site (CSRF guard)")
        site = headers.get("Sec-Fetch-Site")
        if site is not None and site.strip().lower() not in _ALLOWED_FETCH_SITES:
            return Refusal(403, f"lane admin: {method} refused: Sec-Fetch-Site {site[:20]!r} (CSRF guard)")
        if self.token is not None:
            # A browser cannot attach this header to a forged request, so the Host check is moot here
            # (an operator may use a Service name).
            sent = headers.get("Authorization", "")
            scheme, _, value = sent.strip().partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                    value.strip().encode("utf-8", "surrogateescape"), self.token):
                return None
        if not _host_allowed(host, local):
            return Refusal(403, f"lane admin: {method} refused: Host {str(host)[:80]!r} is neither a loopback "
                           "address nor this listener's own (DNS rebinding guard)")
        if peer is not None and _is_loopback(peer):
            return None
        how = "the admin token (Authorization: Bearer)" if self.token is not None else \
            "a token (--admin-token-file or $LANE_ADMIN_TOKEN; none is configured)"
        return Refusal(401, f"lane admin: {method} is allowed only from loopback or with {how}")


def token_file(path: str) -> bytes:
    """The token in *path* (surrounding whitespace dropped); argparse's ``type`` for ``--admin-token-file``."""
    try:
        raw = Path(path).read_bytes()[:MAX_TOKEN_BYTES + 1]
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read the admin token file {path}: {exc.strerror or exc}") from None
    token = raw.strip()
    if not token or len(token) > MAX_TOKEN_BYTES or any(b < 0x21 or b > 0x7E for b in token):
        raise argparse.ArgumentTypeError(
            f"the admin token file {path} must hold one token of 1 to {MAX_TOKEN_BYTES} printable ASCII characters")
    return token


def add_admin_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--admin-token-file", type=token_file, default=None, dest="admin_token", metavar="PATH",
                        help="a file holding a token that lets non-loopback peers use the admin listener's "
                        f"mutating endpoints (POST /lane/reload) with 'Authorization: Bearer TOKEN' "
                        f"(default: ${TOKEN_ENV}, else loopback peers only); GETs are always read-only")


def admin_access(args: argparse.Namespace) -> AdminAccess:
    """The policy for the parsed command line: ``--admin-token-file``, else ``$LANE_ADMIN_TOKEN``, else no token."""
    token: bytes | None = getattr(args, "admin_token", None)
    if token is None:
        env = os.environ.get(TOKEN_ENV, "").strip()
        token = env.encode("utf-8", "surrogateescape") if env else None
    return AdminAccess(token)
