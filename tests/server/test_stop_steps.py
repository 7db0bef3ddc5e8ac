"""A node's teardown (`server/app.py` `Server.stop`): a step that talks to something else and
hangs is cut short after its limit, and the log names it; the node goes on stopping."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sipbridge.server.app import bounded_step


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
