"""The call log writes what queued up in one transaction: a burst of calls, their states and
their quality snapshots together, the latest state of each call winning (issue 18: every call
end cost a transaction of its own for its quality); under a steady flow of calls, a commit at
most every `WRITE_WINDOW_S`."""

from __future__ import annotations

import asyncio
import json

import pytest
from livekit.protocol import sip

from sipbridge.server.state.call_log import QUALITY_KIND, WRITE_WINDOW_S, CallLog
from sipbridge.store import Record, SQLiteStore
from tests.harness import eventually

pytestmark = pytest.mark.timeout(30)

NOW = 1_700_000_000.0


class CountingStore(SQLiteStore):
    """The real SQLite store, counting its write transactions."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.transactions = 0

    async def put_many(self, records: list[Record]) -> None:
        self.transactions += 1
        await super().put_many(records)


async def test_a_burst_of_calls_and_qualities_is_one_or_two_transactions() -> None:
    store = CountingStore()
    await store.open()
    log = CallLog(store, clock=lambda: NOW, retention_days=0)
    log.start()
    try:
        calls = []
        for n in range(200):
            info = sip.SIPCallInfo(
                call_id=f"SCL_{n}",
                call_status=sip.SIPCallStatus.SCS_PARTICIPANT_JOINED,
                created_at_ns=int(NOW * 1e9),
            )
            log.record(info)
            info.call_status = sip.SIPCallStatus.SCS_ACTIVE  # answered before any write
            log.record(info)
            log.record_quality(info.call_id, {"mos": 4.1, "n": n})
            calls.append(info)
        await eventually(lambda: not log._pending, "every change written", timeout=10)
    finally:
        await log.stop()
    assert store.transactions <= 2, store.transactions
    for info in calls[::37]:
        record = await store.get("call", info.call_id)
        assert record is not None
        assert sip.SIPCallInfo.FromString(record.data).call_status == sip.SIPCallStatus.SCS_ACTIVE
        quality = await store.get(QUALITY_KIND, info.call_id)
        assert quality is not None and json.loads(quality.data)["n"] == calls.index(info)
    await store.close()


class TimedStore(CountingStore):
    """The counting store, noting when each of its write transactions began."""

    def __init__(self) -> None:
        super().__init__()
        self.began: list[float] = []

    async def put_many(self, records: list[Record]) -> None:
        self.began.append(asyncio.get_running_loop().time())
        await super().put_many(records)


async def test_under_a_steady_flow_commits_begin_a_window_apart() -> None:
    """Calls that keep coming leave something pending whenever a commit returns: the next one
    waits out the window from the last one's start, instead of following it as soon as the
    store returns (an in-memory store returns at once: a commit every turn of the loop)."""
    store = TimedStore()
    await store.open()
    log = CallLog(store, clock=lambda: NOW, retention_days=0)
    log.start()
    loop = asyncio.get_running_loop()
    flow_s = 10 * WRITE_WINDOW_S
    n = 0
    try:
        end = loop.time() + flow_s
        while loop.time() < end:  # a record every turn of the loop, for ten windows
            # (200 calls changing state: fewer pending than a batch holds, not behind)
            info = sip.SIPCallInfo(call_id=f"SCL_{n % 200}", created_at_ns=int(NOW * 1e9))
            info.call_status = sip.SIPCallStatus.SCS_ACTIVE
            log.record(info)
            n += 1
            turn = loop.create_future()
            loop.call_soon(turn.set_result, None)
            await turn
        await eventually(lambda: not log._pending, "every record written", timeout=10)
    finally:
        await log.stop()
    assert n > 100, n  # (the loop turned often enough for a commit per turn to show)
    gaps = [b - a for a, b in zip(store.began, store.began[1:], strict=False)]
    during = [t for t in store.began if t < end]
    assert len(during) <= flow_s / WRITE_WINDOW_S + 1, (len(during), gaps)
    assert min(gaps) >= WRITE_WINDOW_S - 0.002, gaps  # (the loop's timers: 1 ms resolution)
    for k in (0, 99, 199):
        record = await store.get("call", f"SCL_{k}")
        assert record is not None
        assert sip.SIPCallInfo.FromString(record.data).call_status == sip.SIPCallStatus.SCS_ACTIVE
    await store.close()
