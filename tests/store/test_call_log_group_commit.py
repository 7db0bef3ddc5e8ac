"""Group commit of the call log (server/state/call_log.py) against the real stores, a SQLite file
and a real redis-server: a burst of N calls, each ringing, answered and ended on later turns of
the loop as a server would record them, ends as N records, each in its last state, written in
fewer than N commits - the counters /metrics exports (issue 18: the call log's cost per call)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit.protocol import sip

from sipbridge.server.state.call_log import CallLog
from sipbridge.store.call_query import CallQuery
from tests.harness import eventually
from tests.stores import Store, either_store, opened

pytestmark = pytest.mark.timeout(60)

CALLS = 300
T0 = 1_700_000_000.0


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with opened(either_store(request, tmp_path, "group")) as s:
        yield s


async def next_turn() -> None:
    """One turn of the loop (other callbacks, the log's writer, get to run): no sleep."""
    loop = asyncio.get_running_loop()
    turn = loop.create_future()
    loop.call_soon(turn.set_result, None)
    await turn


async def test_a_burst_of_calls_is_every_record_in_fewer_commits(store: Store) -> None:
    log = CallLog(store, clock=lambda: T0, retention_days=0)
    log.start()
    calls: list[sip.SIPCallInfo] = []
    try:
        for n in range(CALLS):
            info = sip.SIPCallInfo(
                call_id=f"SCL_group{n:04d}",
                sip_call_id=f"{n}@127.0.0.1",
                room_name="burst",
                call_status=sip.SIPCallStatus.SCS_PARTICIPANT_JOINED,
                created_at_ns=int((T0 + n / 1000) * 1e9),
            )
            log.record(info)
            calls.append(info)
            await next_turn()
            if n >= 10:  # answered a little later, and ended a little after that
                ringing = calls[n - 10]
                ringing.call_status = sip.SIPCallStatus.SCS_ACTIVE
                log.record(ringing)
            if n >= 20:
                active = calls[n - 20]
                active.call_status = sip.SIPCallStatus.SCS_DISCONNECTED
                log.record(active)
                log.record_quality(active.call_id, {"mos": 4.2})
        for info in calls[-20:]:
            info.call_status = sip.SIPCallStatus.SCS_DISCONNECTED
            log.record(info)
        await eventually(lambda: not log._pending, "every record written", timeout=30)
        await eventually(lambda: log.records_written >= CALLS, "the counters", timeout=30)
    finally:
        await log.stop()
    logged, _ = await log.page(CallQuery(limit=CALLS + 10, room="burst"))
    assert len(logged) == CALLS
    assert {c.call_status for c in logged} == {sip.SIPCallStatus.SCS_DISCONNECTED}
    assert log.dropped == 0
    # Each call's states and its quality record: at least one record per call, so the commits
    # (each one a transaction and, with SQLite, one fsync) are far fewer than the calls.
    assert log.records_written >= CALLS
    assert 1 <= log.commits < CALLS // 5, (log.commits, log.records_written)
