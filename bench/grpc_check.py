"""Before a gRPC subject is measured: real grpcio calls through it must succeed, each on the right stub.

h2load judges a call by its HTTP status only (`bench/h2load.py`), so a path a real gRPC client
would reject -- a missing ``grpc-status`` trailer, a malformed message, a wrong content type --
could still be measured as fast and right. So each gRPC subject is first called once as gray
(``grpc.primary_user_agent=xiaoming``: the demo's ``xiaoming-grpc`` rule) and once as plain by
grpcio itself, the unary method h2load loads with the same request message; each call must end
OK with the stub's reply (an empty message), and the stub counts around it must show it answered
by exactly the instance of its lane. grpcio runs in a child process (this file as a script):
the benchmark forks its subjects after, and grpcio in the parent would have to survive forks.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import aiohttp
    from stub_backend import Instance, Stubs
    from subjects import Target

__all__ = ["GrpcCheckError", "check_grpc"]

HERE: Final = Path(__file__).resolve().parent


class GrpcCheckError(RuntimeError):
    """A real gRPC client's call through a subject failed or landed on the wrong stub instance."""


def _call(address: str, user_agent: str, timeout: float) -> dict[str, Any]:
    """One grpcio unary call (this file run as a script); its outcome as JSON-ready data."""
    import grpc
    from h2load import GRPC_PATH, REQUEST_MESSAGE

    options = [("grpc.primary_user_agent", user_agent)] if user_agent else []
    with grpc.insecure_channel(address, options=options) as channel:
        method = channel.unary_unary(GRPC_PATH)
        try:
            reply = method(REQUEST_MESSAGE, timeout=timeout)
        except grpc.RpcError as exc:
            return {"code": exc.code().name, "details": exc.details() or ""}
    return {"code": "OK", "reply": bytes(reply).hex()}


async def _call_in_child(address: str, user_agent: str, timeout: float = 10.0) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "grpc_check.py"), address, user_agent, str(timeout),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise GrpcCheckError(f"the grpcio client exited with {proc.returncode}: {err.decode(errors='replace')[-500:]}")
    result: dict[str, Any] = json.loads(out)
    return result


async def check_grpc(target: Target, stubs: Stubs, session: aiohttp.ClientSession,
                     calls: Mapping[str, tuple[str, Instance]]) -> None:
    """*calls* (label -> (user agent, the stub instance that must answer)) made through *target*
    by grpcio, one at a time, with *stubs*' counts around each."""
    address = urlsplit(target.url).netloc
    for label, (user_agent, instance) in calls.items():
        before = await stubs.counts(session)
        answer = await _call_in_child(address, user_agent)
        after = await stubs.counts(session)
        if answer["code"] != "OK" or answer.get("reply") != "":
            raise GrpcCheckError(f"{target.name}: a {label} grpcio call ended {answer['code']} "
                                 f"({answer.get('details') or 'reply ' + str(answer.get('reply'))!r}), expected OK "
                                 "with the stub's empty message")
        answered = {str(i): (after[i] - before[i]).ok for i in after if (after[i] - before[i]).ok}
        if answered != {str(instance): 1}:
            raise GrpcCheckError(f"{target.name}: a {label} grpcio call was answered by {answered or 'no stub'}, "
                                 f"expected {instance} once")


if __name__ == "__main__":  # python grpc_check.py 127.0.0.1:PORT USER_AGENT TIMEOUT: one call, JSON on stdout
    print(json.dumps(_call(sys.argv[1], sys.argv[2], float(sys.argv[3]))))
