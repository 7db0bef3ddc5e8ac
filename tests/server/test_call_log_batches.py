"""The call log writes what queued up in one transaction: a burst of calls, their states and
their quality snapshots together, the latest state of each call winning (issue 18: every call
end cost a transaction of its own for its quality)."""

from __future__ import annotations

import json

import pytest
from livekit.protocol import sip

from sipbridge.server.state.call_log import QUALITY_KIND, CallLog
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
