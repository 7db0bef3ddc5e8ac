"""This node in the cluster, in process: the heartbeat's samples, `GET /sipbridge/v1/nodes`
(what it lists and what it refuses), and the drain driver from SIGTERM to stop on a clock
of our own."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import replace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.exceptions import ConnectionError as RedisConnectionError

from sipbridge.config import Settings
from sipbridge.server import process
from sipbridge.server.api.auth import sign_token
from sipbridge.server.api.node_api import NodeApi
from sipbridge.server.drain import DrainDriver
from sipbridge.server.nodes import Heartbeat
from sipbridge.telephony.drain import Drain, DrainInput, DrainStarted, NodeState
from sipbridge.telephony.node_info import NodeInfo

KEYS = {"key": "secret-long-enough-for-hs256-0123456789abcdef"}


def admin() -> dict[str, str]:
    """An admin's Authorization header, signed now (a token made at import expires before a
    long suite reaches the test)."""
    return {"Authorization": "Bearer " + sign_token("key", KEYS["key"], sip={"admin": True})}


async def test_single_node_lists_itself_with_its_load() -> None:
    load = {"calls": 3}
    beat = Heartbeat(
        NodeInfo(id="solo", sip="127.0.0.1:5060"),
        lambda info: replace(info, calls=load["calls"], rooms=2),
    )
    await beat.start()
    try:
        app = web.Application()
        NodeApi(beat.list, KEYS).routes(app)
        async with TestClient(TestServer(app)) as client:
            load["calls"] = 4
            response = await client.get("/sipbridge/v1/nodes", headers=admin())
            assert response.status == 200
            [row] = (await response.json())["nodes"]
            assert (row["id"], row["calls"], row["rooms"]) == ("solo", 4, 2)
            assert row["state"] == "serving"
            assert row["sip"] == "127.0.0.1:5060" and row["age"] == 0.0
            assert row["cpu"] >= 0.0
    finally:
        await beat.stop()


async def test_refusals() -> None:
    async def broken() -> list[NodeInfo]:
        raise RedisConnectionError("Redis is away")

    app = web.Application()
    NodeApi(broken, KEYS).routes(app)
    calls_only = sign_token("key", KEYS["key"], sip={"call": True})
    async with TestClient(TestServer(app)) as client:
        for headers, status, code in [
            ({}, 401, "unauthenticated"),
            ({"Authorization": f"Bearer {calls_only}"}, 403, "permission_denied"),
            (admin(), 503, "unavailable"),
        ]:
            response = await client.get("/sipbridge/v1/nodes", headers=headers)
            assert response.status == status
            assert (await response.json())["code"] == code


async def test_drain_driver_waits_for_the_calls_then_stops() -> None:
    now = [100.0]
    calls = [2]
    started: list[DrainStarted] = []
    driver = DrainDriver(
        Drain(30), calls=lambda: calls[0], on_drain=started.append, clock=lambda: now[0]
    )
    waiting = asyncio.create_task(driver.wait_stopped())
    driver.signal(DrainInput.TERM)
    assert started == [DrainStarted(deadline=130.0, calls=2)]
    assert driver.drain.state is NodeState.DRAINING
    await asyncio.sleep(0)
    assert not waiting.done()
    calls[0] = 0  # the last call ends: noticed at the next count
    stopped = await asyncio.wait_for(waiting, 2)
    assert stopped.cause is DrainInput.IDLE and not stopped.hang_up


async def test_drain_driver_hangs_up_at_the_deadline() -> None:
    now = [0.0]
    driver = DrainDriver(Drain(5), calls=lambda: 1, on_drain=lambda _: None, clock=lambda: now[0])
    driver.signal(DrainInput.TERM)
    waiting = asyncio.create_task(driver.wait_stopped())
    await asyncio.sleep(0)
    now[0] = 5.0
    stopped = await asyncio.wait_for(waiting, 2)
    assert stopped.cause is DrainInput.TIMEOUT and stopped.hang_up


async def test_a_second_sigterm_while_draining_hangs_up_at_once() -> None:
    driver = DrainDriver(Drain(30), calls=lambda: 1, on_drain=lambda _: None, clock=lambda: 0.0)
    waiting = asyncio.create_task(driver.wait_stopped())
    driver.signal(DrainInput.TERM)
    await asyncio.sleep(0.15)  # a poll or two: still draining
    assert not waiting.done()
    driver.signal(DrainInput.TERM)
    stopped = await asyncio.wait_for(waiting, 2)
    assert stopped.cause is DrainInput.TERM and stopped.hang_up


async def test_a_signal_during_the_teardown_finds_the_handlers_still_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A supervisor's second SIGTERM may arrive while the node closes its sockets and leaves the
    cluster; with the default action back in place it would kill the node mid-cleanup."""
    seen: list[object] = []

    class Node:
        def __init__(self, settings: object) -> None:
            self.drain = Drain(30)

        def calls_in_progress(self) -> int:
            return 0

        def start_draining(self, started: DrainStarted) -> None:
            pass

        async def start(self) -> None:
            signal.raise_signal(signal.SIGTERM)  # no call up: the node stops at once

        async def stop(self) -> None:
            seen.append(handler := signal.getsignal(signal.SIGTERM))
            if handler not in (signal.SIG_DFL, signal.SIG_IGN, None):  # else it would kill us
                signal.raise_signal(signal.SIGTERM)  # the second one: the node is stopped
            await asyncio.sleep(0)

    monkeypatch.setattr(process, "Server", Node)
    await asyncio.wait_for(process.serve(Settings()), 5)
    assert seen and seen[0] not in (signal.SIG_DFL, signal.SIG_IGN, None)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # removed once the node is down
