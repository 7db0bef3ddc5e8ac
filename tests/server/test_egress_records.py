"""Recordings kept in the store (`server/recording/records.py`), in SQLite and in Redis: a
restart finds them, those left in progress are marked FAILED (only this node's, when nodes
share Redis), and a call is linked to its recordings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from livekit.protocol import egress as proto

from sipbridge.server.recording.records import (
    KIND,
    LOST,
    EgressRecords,
    decode,
    recording_summary,
)
from sipbridge.store.redis import RedisStore
from tests.redis_server import RedisServer, redis_server
from tests.stores import Store, either_store, opened

pytestmark = pytest.mark.timeout(30)
Status = proto.EgressStatus


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with opened(either_store(request, tmp_path, "rec")) as s:
        yield s


def info(egress_id: str, status: int, at: int) -> proto.EgressInfo:
    made = proto.EgressInfo(egress_id=egress_id, room_name="r", status=status, updated_at=at)  # type: ignore[arg-type]
    made.file_results.add(filename="a.ogg", location="/rec/a.ogg", duration=2_000_000_000)
    return made


async def test_a_restart_finds_the_recordings_and_fails_those_cut_short(store: Store) -> None:
    shared = isinstance(store, RedisStore)
    before = EgressRecords(store, shared=shared)
    await before.recover("node-a", 0)
    before.save(info("EG_done", Status.EGRESS_COMPLETE, 1))
    before.save(info("EG_cut", Status.EGRESS_ACTIVE, 2))
    before.save(info("EG_gone", Status.EGRESS_COMPLETE, 3))
    before.forget("EG_gone")
    before.link_call("SCL_1", "EG_done")
    before.link_call("SCL_1", "EG_cut")
    before.link_call("SCL_1", "EG_done")  # once only
    await before.flush()
    other = EgressRecords(store, shared=shared)
    await other.recover("node-b", 99)
    other.save(info("EG_elsewhere", Status.EGRESS_ACTIVE, 4))
    await other.flush()

    after = EgressRecords(store, shared=shared)
    found = {i.egress_id: i for i in await after.recover("node-a", 99)}
    # another node's recordings are its own business when nodes share the store
    assert set(found) == {"EG_done", "EG_cut", *(() if shared else ("EG_elsewhere",))}
    assert found["EG_done"].status == Status.EGRESS_COMPLETE
    assert (found["EG_cut"].status, found["EG_cut"].error) == (Status.EGRESS_FAILED, LOST)
    assert found["EG_cut"].ended_at == 99
    if not shared:  # all of it this server's: a second restart
        assert found["EG_elsewhere"].status == Status.EGRESS_FAILED
    else:  # still in progress, as its node left it
        record = await store.get(KIND, "EG_elsewhere")
        assert record is not None
        assert decode(record.data)[0].status == Status.EGRESS_ACTIVE
    linked = await after.for_call("SCL_1")
    assert [i.egress_id for i in linked] == ["EG_done", "EG_cut"]
    assert linked[1].status == Status.EGRESS_FAILED  # the failure was written back
    assert recording_summary(linked[0]) == {
        "egress_id": "EG_done",
        "status": "complete",
        "location": "/rec/a.ogg",
        "duration_ms": 2000,
        "size": 0,
        "error": "",
    }
    assert await after.for_call("SCL_none") == []
