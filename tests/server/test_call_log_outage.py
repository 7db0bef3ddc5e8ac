"""The call log while Redis is away (docs/cluster.md, failure cases): states recorded while the
store cannot be reached are kept (the latest per call; quality and transfer records too) and
written once it is back; a stop
while it is still away gives up after one more try and counts them as dropped. A real
redis-server, stopped and started again on the same port and data."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from livekit.protocol import sip

from sipbridge.server.state.call_log import CallLog
from sipbridge.store.redis import RedisStore
from tests.harness import eventually
from tests.redis_server import comes_to, redis_server

pytestmark = pytest.mark.timeout(30)


def call(n: int, status: int) -> sip.SIPCallInfo:
    return sip.SIPCallInfo(
        call_id=f"SCL_{n:04}", call_status=status, created_at_ns=1_700_000_000_000_000_000 + n
    )


async def stored_status(store: RedisStore, call_id: str) -> int | None:
    record = await store.get("call", call_id)
    return None if record is None else sip.SIPCallInfo.FromString(record.data).call_status


async def test_states_recorded_while_redis_is_down_are_written_when_it_returns(
    tmp_path: Path,
) -> None:
    s = sip.SIPCallStatus
    with redis_server(tmp_path / "redis", persistent=True) as redis:
        store = RedisStore(redis.url, prefix=f"outage{secrets.token_hex(3)}:")
        await store.open()
        log = CallLog(store, lambda: 1_700_000_000.0, retention_days=0)
        log.start()
        try:
            log.record(call(1, s.SCS_ACTIVE))
            await eventually(
                lambda: comes_to(stored_status(store, "SCL_0001"), s.SCS_ACTIVE), "SCL_1"
            )

            redis.stop()
            log.record(call(1, s.SCS_DISCONNECTED))
            log.record(call(2, s.SCS_ACTIVE))
            await eventually(lambda: log.waiting == 2, "the writes kept while Redis is away")
            log.record(call(2, s.SCS_DISCONNECTED))  # merged: the latest state wins
            log.record(call(3, s.SCS_ERROR))
            log.record_quality("SCL_0003", {"mos": 4.1})  # written in the background, kept too
            redis.start()

            await eventually(lambda: log.waiting == 0, "the kept writes written", timeout=10)
            for n, status in ((1, s.SCS_DISCONNECTED), (2, s.SCS_DISCONNECTED), (3, s.SCS_ERROR)):
                # (polled: a pooled connection Redis closed fails once, as redis-py does)
                await eventually(
                    lambda n=n, status=status: comes_to(
                        stored_status(store, f"SCL_{n:04}"), status
                    ),  # type: ignore[misc]
                    f"SCL_{n} written",
                    timeout=2,
                )
            await eventually(lambda: comes_to(log.quality("SCL_0003"), {"mos": 4.1}), "the quality")
            assert log.dropped == 0

            # Stopping while Redis is away: one more try, then the kept states are dropped.
            redis.stop()
            log.record(call(4, s.SCS_ACTIVE))
            await eventually(lambda: log.waiting == 1, "the write kept")
            await log.stop()
            assert log.dropped == 1
        finally:
            await log.stop()
            await store.close()
