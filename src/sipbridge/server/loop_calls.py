"""Event-loop calls whose results differ between asyncio and uvloop, made so that compiled
callers (mypyc checks a typed method's result at run time) accept both."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def remove_reader(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """`loop.remove_reader(fd)`, its result ignored: asyncio's is a bool, uvloop's None, which
    compiled code called through the typed method would refuse (TypeError)."""
    remove: Callable[[int], object] = loop.remove_reader
    remove(fd)
