"""Synthetic users through the gateway while a step is judged (``--load``), like Flagger's load tester.

The requests are the load test's own personas (`loadtest.personas`): the request that satisfies the
lane's rule, with its sticky key replaced by one of ``users`` user ids, so the share of users the
rule puts in the lane is the step's share, and the other users are the default lane's traffic on the
same path. Plain aiohttp in this process: locust (which monkey-patches the process) stays out.
Bounded: a fixed rate, a cap on requests in flight, and it stops with the rollout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from lane.core.config import LaneConfig
from loadtest.personas import build_personas

from .errors import RolloutInputError

__all__ = ["LoadCounts", "UserRequests", "load_running", "run_load"]

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 32


@dataclass(slots=True)
class LoadCounts:
    sent: int = 0
    failed: int = 0  # 5xx or no answer


@dataclass(frozen=True, slots=True)
class UserRequests:
    """The rule's request, per user: headers and query with the sticky key replaced by the user's id."""

    headers: tuple[tuple[str, str], ...]
    query: str
    key: str | None  # the persona's sticky key to replace; None: a random share, the same request for all

    @classmethod
    def of_rule(cls, config: LaneConfig, rule: str) -> UserRequests:
        personas = [p for p in build_personas(config, forged=False) if p.rule == rule]
        keyed = [p for p in personas if p.kind == "sticky" and p.sticky_key]
        if keyed:
            return cls(keyed[0].headers, keyed[0].query, keyed[0].sticky_key)
        plain = [p for p in personas if p.kind in ("share", "match")]
        if not plain:
            raise RolloutInputError(
                f"--load: cannot build a request matching rule {rule} (see lane loadtest)"
            )
        return cls(plain[0].headers, plain[0].query, None)

    def for_user(self, user: str) -> tuple[dict[str, str], str]:
        if self.key is None:
            return dict(self.headers), self.query
        return {k: v.replace(self.key, user) for k, v in self.headers}, self.query.replace(self.key, user)


async def _one(
    session: aiohttp.ClientSession, url: str, request: UserRequests, user: str, counts: LoadCounts
) -> None:
    headers, query = request.for_user(user)
    try:
        async with session.get(f"{url}/" + (f"?{query}" if query else ""), headers=headers) as resp:
            await resp.read()
            counts.failed += resp.status >= 500
    except (TimeoutError, aiohttp.ClientError):
        counts.failed += 1
    finally:
        counts.sent += 1


async def run_load(url: str, request: UserRequests, *, rate: float, users: int, counts: LoadCounts) -> None:
    """Send about *rate* requests a second from *users* user ids until cancelled."""
    pace = 1.0 / rate
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    tasks: set[asyncio.Task[None]] = set()

    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        slots.release()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        try:
            while True:
                await slots.acquire()
                task = asyncio.create_task(
                    _one(session, url.rstrip("/"), request, f"user-{random.randrange(users)}", counts)
                )
                tasks.add(task)
                task.add_done_callback(done)
                await asyncio.sleep(pace)
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def load_running(
    url: str | None, request: UserRequests | None, *, rate: float, users: int
) -> AsyncIterator[LoadCounts]:
    """Run the load in the background for the block (nothing when *url* is None)."""
    counts = LoadCounts()
    if url is None or request is None:
        yield counts
        return
    task = asyncio.create_task(run_load(url, request, rate=rate, users=users, counts=counts))
    try:
        yield counts
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
