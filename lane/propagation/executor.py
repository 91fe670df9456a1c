"""Carry the caller's context (and so its lane) into executor threads.

``loop.run_in_executor`` runs the function in a worker thread with that thread's own, empty
``contextvars`` context, so `lane.propagation.propagator.current_lane()` is None there and an HTTP call made
from the thread leaves its lane behind. (``asyncio.to_thread`` copies the context; the executor
API does not.) Three ways to fix it, from smallest to widest:

* ``await run_in_executor(None, func, *args)`` instead of ``loop.run_in_executor(...)``;
* ``loop.run_in_executor(pool, carry_context(func), *args)`` for an existing call site;
* ``install_context_executor(loop)`` once at startup: the loop's default executor then copies the
  submitting context itself, so unchanged ``run_in_executor(None, ...)`` calls keep the lane.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

__all__ = ["ContextThreadPoolExecutor", "carry_context", "install_context_executor", "run_in_executor"]

P = ParamSpec("P")
T = TypeVar("T")


def carry_context(func: Callable[P, T]) -> Callable[P, T]:
    """*func* bound to a snapshot of the current context; each call runs in its own copy of it."""
    snapshot = contextvars.copy_context()

    @functools.wraps(func)
    def in_context(*args: P.args, **kwargs: P.kwargs) -> T:
        return snapshot.copy().run(func, *args, **kwargs)

    return in_context


def run_in_executor(executor: Executor | None, func: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``loop.run_in_executor`` on the running loop, with the caller's context carried along."""
    loop = asyncio.get_running_loop()
    return loop.run_in_executor(executor, contextvars.copy_context().run, func, *args)


class ContextThreadPoolExecutor(ThreadPoolExecutor):
    """A thread pool whose tasks run in a copy of the context that submitted them."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        context = contextvars.copy_context()
        return super().submit(functools.partial(context.run, fn, *args, **kwargs))


def install_context_executor(
    loop: asyncio.AbstractEventLoop | None = None, max_workers: int | None = None
) -> ContextThreadPoolExecutor:
    """Make a context-carrying pool the default executor of *loop* (default: the running loop).

    The caller owns the returned pool; ``loop.shutdown_default_executor()`` (which
    ``asyncio.run`` calls) shuts it down.
    """
    target = loop or asyncio.get_running_loop()
    pool = ContextThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="lane-ctx")
    target.set_default_executor(pool)
    return pool
