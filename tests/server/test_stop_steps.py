"""A node's teardown (`server/app.py` `Server.stop`): a step that talks to something else and
hangs is cut short after its limit, and the log names it; the node goes on stopping. A
background task that swallows its cancellation does not hold it either (`stop_task`)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sipbridge.server.app import bounded_step
from sipbridge.server.loop_calls import stop_task


async def test_a_hung_step_is_cut_short_and_named(caplog: pytest.LogCaptureFixture) -> None:
    never = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.WARNING, logger="sipbridge"):
        assert not await bounded_step("the cluster's links", never.wait(), limit=0.1)
    assert loop.time() - started < 5.0
    assert "stopping: the cluster's links took more than 0.1 s; cut short" in caplog.text


async def test_a_step_that_ends_is_awaited_whole() -> None:
    done: list[str] = []

    async def step() -> None:
        await asyncio.sleep(0)
        done.append("closed")

    assert await bounded_step("closing SIP", step(), limit=5.0)
    assert done == ["closed"]


async def test_a_task_that_swallows_its_cancellation_does_not_hold_the_stop() -> None:
    """As a Redis call may: the first cancellation is caught and the task's loop goes on."""
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed.is_set():
                    raise
                swallowed.set()  # (the cancellation lost, as inside a swallowing client)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert not await stop_task(task, limit=0.1)
    assert loop.time() - started < 5.0
    await asyncio.wait({task}, timeout=5.0)  # the second cancellation ends it
    assert swallowed.is_set() and task.cancelled()


async def test_a_task_that_ends_when_cancelled_is_awaited() -> None:
    task = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    assert await stop_task(task, limit=5.0)
    assert task.cancelled()
