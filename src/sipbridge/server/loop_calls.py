"""Event-loop calls whose results differ between asyncio and uvloop, made so that compiled
callers (mypyc checks a typed method's result at run time) accept both; and a background task
stopped with a bound."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


def remove_reader(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """`loop.remove_reader(fd)`, its result ignored: asyncio's is a bool, uvloop's None, which
    compiled code called through the typed method would refuse (TypeError)."""
    remove: Callable[[int], object] = loop.remove_reader
    remove(fd)


async def stop_task(task: asyncio.Task[Any], limit: float = 2.0) -> bool:
    """Cancel `task` and wait for its end, `limit` seconds at most: whether it ended. A Redis
    call may swallow a cancellation and the task's loop go on (then `await task` would wait
    forever, and a node's stop with it): past the limit it is cancelled again, not awaited."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=limit)
    if not done:
        task.cancel()
        return False
    if not task.cancelled():
        task.exception()  # (retrieved: an error of a task being stopped is not reported)
    return True
