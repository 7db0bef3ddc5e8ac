"""A flood from one source leaves everyone else's calls alone (issue 17, Done when): 20,000
INVITEs from 127.0.0.1 into a room that holds a call between two phones on 127.0.0.2; the
phones' audio never stops for 200 ms or more, OPTIONS from 127.0.0.3 keep a p99 under 20 ms,
and once the flood's calls have ended the server's memory is back near where it was.

Against a real `sipbridge serve` with its default limits, sipp as the flood
(`sipp/uac_flood.xml`) and the phones and pinger of `tests/flood.py`, which stamp what they
receive on their own threads.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable

import pytest

from tests import harness
from tests.flood import SIPP_FLOOD, Phone, Pinger, percentile, rss_bytes
from tests.harness import client, eventually
from tests.helpers import ServerProcess
from tests.interop.test_inbound import CALLED
from tests.interop.test_inbound_cases import (
    ServerFactory,
    direct,
    dispatch_rule,
    inbound_trunk,
    serve,  # noqa: F401 - the fixture
)

pytestmark = pytest.mark.skipif(
    not (shutil.which("sipp") and shutil.which("timeout")), reason="sipp comes with `make test`"
)

FLOOD_INVITES = 20_000
FLOOD_RATE = 5_000  # INVITEs a second: the flood of the issue, 20,000 in 4 s
WORST_GAP_S = 0.200
OPTIONS_P99_S = 0.020
MEMORY_SLACK = 24 * 1024 * 1024  # what may stay resident after the flood's calls are gone


def calls_back_to(server: ServerProcess, count: int) -> Callable[[], Awaitable[bool]]:
    """A check for `eventually`: `sipbridge_calls_active` is `count`."""

    async def check() -> bool:
        return await harness.metric(server, "sipbridge_calls_active") == count

    return check


def flood_count(metrics: dict[str, float], kind: str) -> float:
    return metrics.get(f'sipbridge_sip_messages_total{{kind="{kind}"}}', 0.0)


async def flood(server: ServerProcess, *, invites: int, rate: int, hold_ms: int) -> harness.SippRun:
    """sipp's INVITEs from 127.0.0.1, each call its own caller number."""
    return await harness.sipp(
        SIPP_FLOOD,
        server.sip_port,  # type: ignore[attr-defined]
        calls=invites,
        rate=rate,
        hold_ms=hold_ms,
        keys={"called": CALLED},
        limit=invites / rate + 20,
        timeout_error=False,
        extra=["-recv_timeout", "2000", "-buff_size", "4194304", "-max_recv_loops", "10000"],
    )


async def test_a_flood_from_one_source_leaves_a_call_and_pings_from_others_alone(
    serve: ServerFactory,  # noqa: F811
) -> None:
    server = await serve()
    port = server.sip_port  # type: ignore[attr-defined]
    assert server.proc is not None
    pid = server.proc.pid
    alice, bob = Phone("127.0.0.2", "+15550002"), Phone("127.0.0.2", "+15550003")
    pinger = Pinger("127.0.0.3", port)
    try:
        async with client(server) as lk:
            await inbound_trunk(lk)
            await dispatch_rule(lk, direct("flooded"))
        # The first rings until the second joins the room: then both are answered.
        await asyncio.gather(*(asyncio.to_thread(p.dial, port, CALLED) for p in (alice, bob)))
        for phone in (alice, bob):
            phone.start_media()
        await eventually(
            lambda: len(alice.arrivals) > 25 and len(bob.arrivals) > 25, "the phones to hear"
        )
        baseline = rss_bytes(pid)
        pinger.start()
        await eventually(lambda: len(pinger.latencies) >= 20, "OPTIONS answered before the flood")
        quiet = len(pinger.latencies)

        started = time.monotonic()
        run = await flood(server, invites=FLOOD_INVITES, rate=FLOOD_RATE, hold_ms=1000)
        ended = time.monotonic()
        during = pinger.latencies[quiet:]
        metrics = await asyncio.to_thread(server.metrics)
        # only the phones' call is left
        await eventually(calls_back_to(server, 2), "the flood's calls to end", timeout=20)
        after = rss_bytes(pid)
        pinger.stop()

        gaps = [phone.worst_gap(started, ended) for phone in (alice, bob)]
        p99 = percentile(during, 99)
        summary = (
            f"flood {ended - started:.1f} s, sipp exit {run.code}; worst audio gap "
            f"{max(gaps) * 1000:.0f} ms (phones' own sending late by at most "
            f"{max(alice.sent_late, bob.sent_late) * 1000:.0f} ms); "
            f"OPTIONS p99 {p99 * 1000:.1f} ms "
            f"of {len(during)} ({pinger.lost} lost); RSS {baseline >> 20} -> {after >> 20} MiB; "
            f"flood INVITEs refused {flood_count(metrics, 'refused_flood'):g}, dropped unread "
            f"{flood_count(metrics, 'dropped_flood'):g}"
        )
        print(summary)  # shown with -s, and in the report of a failure
        # The flood was a flood: it reached the server, and most of it went unanswered.
        assert flood_count(metrics, "dropped_flood") > FLOOD_INVITES / 2, (summary, run.out[-2000:])
        assert max(gaps) < WORST_GAP_S, summary
        assert p99 < OPTIONS_P99_S, summary
        assert after - baseline < MEMORY_SLACK, summary
        for phone in (alice, bob):
            await asyncio.to_thread(phone.hang_up)
        await eventually(calls_back_to(server, 0), "the phones' call to end")
    finally:
        pinger.stop()
        alice.close()
        bob.close()
