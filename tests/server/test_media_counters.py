"""The media service's RTP counters (`/metrics` `sipbridge_media`, bench/media.py's
"server_metrics") count each packet once, also once the legs ended: a leg released twice - a
call's end and its media's end both release it - added its counters to the ended legs' totals
twice, and bench/media.py reported twice the packets the server relayed (issue 18).

Real `MediaService` legs and phones on loopback, through the compiled engine when it is built and
through the event loop otherwise (SIPBRIDGE_NO_CRELAY=1)."""

from __future__ import annotations

import asyncio

import pytest

from tests.harness import eventually
from tests.server.test_call_media import Harness, paced

pytestmark = pytest.mark.timeout(30)

PACKETS = 25


async def test_each_packet_counted_once_after_the_legs_are_released_twice(
    media: Harness,
) -> None:
    a, b = media.phone(), media.phone()
    legs = [media.call(phone, room="pair") for phone in (a, b)]
    payload = b"\xff" * 160
    async with asyncio.TaskGroup() as group:
        group.create_task(paced(a, [payload] * PACKETS))
        group.create_task(paced(b, [payload] * PACKETS))

    def received() -> bool:
        for leg in legs:
            leg.sync()
        return all(leg.stats.packets_in == PACKETS for leg in legs)

    await eventually(received, "every packet received", timeout=5.0)
    svc = media.svc
    live = svc.samples()
    assert live["rtp_packets_in"] == 2 * PACKETS
    forwarded = live["rtp_forwarded"]
    assert PACKETS <= forwarded <= 2 * PACKETS  # the first packets may be taken, not relayed
    for leg in legs:
        svc.release(leg)
    for leg in legs:
        svc.release(leg)  # again, as a call's end and its media's end both do
    ended = svc.samples()
    assert ended["legs"] == 0
    assert ended["rtp_packets_in"] == 2 * PACKETS
    assert ended["rtp_forwarded"] == forwarded
    assert ended["rtp_packets_out"] == live["rtp_packets_out"]
    assert ended["released_again"] == 2
