"""The relay engine's rounds (`_crelay.c` `round_gap`): 1 ms apart while traffic is dense, up to
2 ms apart while it is sparse (under 10 datagrams a millisecond), so that a wake-up still finds
several datagrams (issue 18: at 50 relayed calls a wake-up every millisecond cost the engine a
tenth of its CPU). A real engine relaying two phones on loopback (tests/server/test_crelay.py's
bridge); the engine's own report of the gap it chose (`counters()["gap_us"]`)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from sipbridge.server.media import crelay
from tests.harness import eventually
from tests.server.test_call_media import paced
from tests.server.test_crelay import FRAME, Bridge, relay_mode, require_mode

__all__ = ["relay_mode"]  # the fixture (test_crelay.py): each test in both engine modes

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not crelay.available(), reason="the relay engine is not built or is off"),
    pytest.mark.skipif(
        bool(
            os.environ.get("SIPBRIDGE_CRELAY_BATCH_US")
            or os.environ.get("SIPBRIDGE_CRELAY_SPARSE_US")
        ),
        reason="the engine's rounds are set from the environment",
    ),
]

BURST = 100  # datagrams sent at once, every 5 ms: 20 a millisecond


async def burst(bridge: Bridge) -> None:
    """BURST datagrams from A every 5 ms, for up to 2 s (until cancelled)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index in range(400):
        for _ in range(BURST):
            bridge.a.send_rtp(bytes(FRAME))
        await asyncio.sleep(max(0.0, start + (index + 1) * 0.005 - loop.time()))  # the pace


@pytest.fixture
async def bridge(monkeypatch: pytest.MonkeyPatch, relay_mode: str) -> AsyncIterator[Bridge]:
    monkeypatch.setattr(crelay, "REARM_S", 0.02)  # to the engine within a few packets
    bridge = Bridge(engine=True)
    try:
        assert bridge.harness.svc.crelay is not None
        require_mode(bridge.harness.svc.crelay, relay_mode)
        yield bridge
    finally:
        bridge.close()


async def test_rounds_stretch_while_traffic_is_sparse_and_not_while_dense(bridge: Bridge) -> None:
    engine = bridge.harness.svc.crelay
    assert engine is not None

    def gap() -> int:
        return int(engine.counters()["gap_us"])

    # 100 datagrams a second: sparse
    sender = asyncio.create_task(paced(bridge.a, [bytes(FRAME)] * 300, ptime=0.01))
    try:
        await eventually(
            lambda: engine.counters()["armed"] == 1 and gap() == crelay.SPARSE_US,
            "rounds 2 ms apart at 100 datagrams a second",
            timeout=5.0,
        )
        forwarded = engine.counters()["forwarded"]
        dense = asyncio.create_task(burst(bridge))
        try:  # dense: the rounds follow 1 ms apart
            await eventually(
                lambda: gap() == crelay.BATCH_US, "rounds 1 ms apart in a burst", interval=0.001
            )
        finally:
            dense.cancel()
            with pytest.raises(asyncio.CancelledError):
                await dense
        await eventually(
            lambda: engine.counters()["forwarded"] >= forwarded + BURST, "the burst relayed"
        )
        # sparse again: stretched again
        await eventually(
            lambda: gap() == crelay.SPARSE_US, "rounds 2 ms apart after the burst", timeout=5.0
        )
    finally:
        sender.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sender
