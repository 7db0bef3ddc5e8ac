"""RFC 4028 session timers on inbound calls, both roles, against raw UDP phones (the `Phone` of
test_call_media_cases.py, which answers every request 200 and queues it): a caller that asks
`refresher=uas` gets our refreshes at half the interval (UPDATE, since it allows UPDATE), and one
that says `refresher=uac` and never refreshes gets our BYE before the interval passes.

Short for CI, as in test_outbound_session_timers.py: `--session-min-se 4` and an interval of 4 s
(the same code runs 90 s and 1800 s intervals in tests/sip/test_session_timer.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipbridge.sip.message import Request
from tests.harness import served, sip_server_process
from tests.helpers import ServerProcess
from tests.interop.test_call_media_cases import (
    RTP_PORTS,
    assert_clean,
    configure,
    phones,
)

INTERVAL = 4
ALLOW = "Allow: INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    flags = ("--rtp-ports", RTP_PORTS, "--session-min-se", str(INTERVAL))
    with served(sip_server_process(tmp_path, *flags)) as proc:
        yield proc


async def next_request(queue: asyncio.Queue[Request], method: str, within: float) -> Request:
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {method} within {within} s"
        request = await asyncio.wait_for(queue.get(), left)
        if request.method == method:
            return request


async def test_we_refresh_for_uas_and_end_a_session_the_caller_lets_expire(
    server: ServerProcess,
) -> None:
    await configure(server)
    async with phones(server, "+15550311", "+15550312") as (refreshed, lapsing):
        timer = f"Session-Expires: {INTERVAL};refresher="
        ringing = asyncio.create_task(refreshed.invite(timer + "uas", "Supported: timer", ALLOW))
        await asyncio.wait_for(refreshed.ringing.wait(), 5)
        reply = await lapsing.invite(timer + "uac", "Supported: timer", ALLOW)
        answered = time.monotonic()  # both: the second joins, and the first is answered too
        assert reply.status == 200, reply
        assert reply.headers.get("Session-Expires") == f"{INTERVAL};refresher=uac"
        reply = await ringing
        assert reply.status == 200, reply
        assert reply.headers.get("Session-Expires") == f"{INTERVAL};refresher=uas"
        assert reply.headers.get("Require") == "timer"

        # We are the refresher of the first call: an UPDATE at half the interval, each time.
        half = INTERVAL / 2
        first = await next_request(refreshed.requests, "UPDATE", half + 1.5)
        first_at = time.monotonic() - answered
        assert half - 0.5 <= first_at <= half + 1.5, first_at
        assert first.headers.get("Session-Expires") == f"{INTERVAL};refresher=uac"
        assert "timer" in (first.headers.get("Supported") or "")

        # The second call's caller was to refresh, and did not: our BYE before the interval.
        await next_request(lapsing.requests, "BYE", INTERVAL - first_at)
        bye_at = time.monotonic() - answered
        assert INTERVAL - min(32, INTERVAL / 3) - 0.5 <= bye_at < INTERVAL, bye_at

        second = await next_request(refreshed.requests, "UPDATE", half + 1.5)
        assert half - 0.5 <= time.monotonic() - answered - first_at <= half + 1.5
        assert second.cseq.seq > first.cseq.seq
        assert (await refreshed.bye()).status == 200  # still up after its refreshes
    assert_clean(server)
