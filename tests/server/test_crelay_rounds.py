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
from tests.server.test_crelay import FRAME, Bridge

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

BURST = 600  # datagrams sent at once: far more than 10 a millisecond


@pytest.fixture
async def bridge(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Bridge]:
    monkeypatch.setattr(crelay, "REARM_S", 0.02)  # to the engine within a few packets
    bridge = Bridge(engine=True)
    try:
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
        for _ in range(BURST):  # dense: the next rounds follow 1 ms apart
            bridge.a.send_rtp(bytes(FRAME))
        await eventually(
            lambda: gap() == crelay.BATCH_US, "rounds 1 ms apart in a burst", interval=0.001
        )
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
