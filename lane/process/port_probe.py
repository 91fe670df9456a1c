"""Whether an address can be listened on now, asked before a command starts child processes.

`lane demo` and ``lane gateway --workers N`` start processes that bind their ports much later (the
demo's gateway after twelve others; each worker after its own import); a busy or impossible port
then surfaces as a child's failure, after seconds of work and a stack of logs. Binding a probe
socket first turns it into one line before anything starts. It is a check, not a reservation: the
port may still be taken in between, and the real bind's error stays as the last word.
"""

from __future__ import annotations

import socket

__all__ = ["bind_problem"]


def bind_problem(host: str, port: int, *, reuse_port: bool = False) -> str | None:
    """Why *host*:*port* cannot be listened on right now (``address already in use``, ...), else None.

    The probe sets the options the real listener sets (``SO_REUSEADDR`` like asyncio's
    ``create_server``, ``SO_REUSEPORT`` for listeners workers share), so it fails where the real bind
    would: a port another program listens on, an address this host does not have, a privileged port.
    """
    if port == 0:
        return None  # the kernel picks a free one
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind((host, port))
            probe.listen(1)  # SO_REUSEPORT conflicts show at bind; a listener's only at listen on some kernels
        except OSError as exc:
            return str(exc.strerror or exc).lower()
    return None
