"""The Redis record store against a real redis-server (one for the module, a key prefix per
test): put/get/load/delete, a batch seen whole with its change messages after it, the messages
themselves, following changes across a dropped subscription, and an unreachable Redis."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from sipbridge.store import KINDS, Record, RecordStore, StoreUnavailable, store_at
from sipbridge.store.redis import RedisStore, redacted
from tests.harness import eventually
from tests.helpers import free_port
from tests.redis_server import RedisServer, redis_server
from tests.stores import opened

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def prefix() -> str:
    return f"t{secrets.token_hex(4)}:"


@pytest.fixture
async def store(redis: RedisServer, prefix: str) -> AsyncIterator[RedisStore]:
    async with opened(RedisStore(redis.url, prefix=prefix)) as s:
        yield s


def rec(kind: str, record_id: str, data: bytes = b"") -> Record:
    return Record(kind=kind, id=record_id, data=data or record_id.encode())


def test_redis_store_satisfies_the_protocol() -> None:
    store: RecordStore = RedisStore("redis://127.0.0.1:1/0")  # checked by mypy
    assert isinstance(store_at("redis://127.0.0.1:1/0"), RedisStore)
    assert store is not None


def test_passwords_stay_out_of_messages() -> None:
    assert redacted("redis://u:hunter2@h:1/0") == "redis://u:***@h:1/0"
    assert redacted("redis://h:1/0") == "redis://h:1/0"


async def test_put_get_load_delete(store: RedisStore) -> None:
    for kind in sorted(KINDS):
        assert await store.load(kind) == []
    await store.put(rec("inbound_trunk", "ST_b", b"\x00\xffbinary"))
    await store.put(rec("inbound_trunk", "ST_a"))
    await store.put(rec("dispatch_rule", "SDR_a"))
    assert [r.id for r in await store.load("inbound_trunk")] == ["ST_a", "ST_b"]
    assert await store.get("inbound_trunk", "ST_b") == rec(
        "inbound_trunk", "ST_b", b"\x00\xffbinary"
    )
    assert await store.get("inbound_trunk", "ST_none") is None
    await store.put(rec("inbound_trunk", "ST_a", b"replaced"))
    assert (await store.load("inbound_trunk"))[0].data == b"replaced"
    assert await store.delete("inbound_trunk", "ST_a") is True
    assert await store.delete("inbound_trunk", "ST_a") is False
    assert [r.id for r in await store.load("inbound_trunk")] == ["ST_b"]
    assert [r.id for r in await store.load("dispatch_rule")] == ["SDR_a"]
    with pytest.raises(ValueError, match="unknown record kind"):
        await store.put(rec("nonsense", "x"))
    with pytest.raises(ValueError, match="unknown record kind"):
        await store.put_many([rec("call", "CALL_ok"), rec("nonsense", "x")])
    assert await store.load("call") == []  # a batch with a bad record writes nothing


async def test_keys_are_prefixed_hashes(
    store: RedisStore, raw: aioredis.Redis, prefix: str
) -> None:
    await store.put(rec("outbound_trunk", "ST_o"))
    assert await raw.type(f"{prefix}rec:outbound_trunk") == b"hash"
    assert await raw.hget(f"{prefix}rec:outbound_trunk", "ST_o") == b"ST_o"
    other = RedisStore(store.url, prefix=f"other-{prefix}")
    await other.open()
    try:
        assert await other.load("outbound_trunk") == []  # two clusters can share one Redis
    finally:
        await other.close()


async def test_changes_are_announced_after_the_data(
    store: RedisStore, raw: aioredis.Redis, prefix: str
) -> None:
    """Each write of a cached kind publishes `{kind} {id}` in the same MULTI/EXEC: whoever hears
    the first message of a batch can already read every record of it. Transfer (and call)
    records announce nothing (no node caches them)."""
    pubsub = raw.pubsub()
    await pubsub.subscribe(f"{prefix}changes")
    try:
        confirmation = await pubsub.get_message(timeout=5)
        assert confirmation is not None and confirmation["type"] == "subscribe"
        batch = [rec("dispatch_rule", f"SDR_{i:03}") for i in range(200)]
        batch.append(rec("transfer", "STR_1"))
        await store.put_many(batch)
        first = await pubsub.get_message(timeout=5)
        assert first is not None and first["data"] == b"dispatch_rule SDR_000"
        assert await raw.hlen(f"{prefix}rec:dispatch_rule") == 200  # the whole batch
        await store.delete("dispatch_rule", "SDR_000")
        seen = [first["data"].decode()]

        async def heard_all() -> bool:
            message = await pubsub.get_message(timeout=0.1)
            if message is not None:
                seen.append(message["data"].decode())
            return len(seen) == 201

        await eventually(heard_all, "201 change messages", timeout=5, interval=0)
        assert seen[:200] == [f"dispatch_rule SDR_{i:03}" for i in range(200)]
        assert seen[200] == "dispatch_rule SDR_000"  # the delete, and no message for the transfer
        assert await pubsub.get_message(timeout=0.05) is None
    finally:
        await pubsub.aclose()


async def test_follow_reloads_then_applies_changes_and_resyncs_after_a_drop(
    store: RedisStore, raw: aioredis.Redis, prefix: str
) -> None:
    """`follow` reloads once subscribed, then passes each change in order; when Redis drops
    the subscription (here: CLIENT KILL of every subscriber) it subscribes again and reloads,
    because whatever was published meanwhile is lost."""
    writer = RedisStore(store.url, prefix=prefix)
    await writer.open()
    changes: list[tuple[str, str]] = []
    resyncs: list[int] = []

    async def on_change(kind: str, record_id: str) -> None:
        changes.append((kind, record_id))

    async def on_resync() -> None:
        resyncs.append(len(changes))

    try:
        await store.follow(on_change, on_resync)
        assert resyncs == [0]
        await writer.put(rec("inbound_trunk", "ST_1"))
        await writer.delete("inbound_trunk", "ST_1")
        await eventually(lambda: len(changes) == 2, "two changes")
        assert changes == [("inbound_trunk", "ST_1"), ("inbound_trunk", "ST_1")]
        assert await raw.client_kill_filter(_type="pubsub") >= 1
        await eventually(lambda: len(resyncs) == 2, "a reload after resubscribing")
        await writer.put(rec("dispatch_rule", "SDR_2"))
        await eventually(lambda: changes[-1] == ("dispatch_rule", "SDR_2"), "the next change")
        assert store.resyncs == 2
    finally:
        await writer.close()


async def test_unreachable_redis_is_a_clear_error() -> None:
    store = RedisStore(f"redis://:pw@127.0.0.1:{free_port()}/0")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(StoreUnavailable, match=r"cannot reach Redis at redis://:\*\*\*@127"):
        await store.open()
    assert loop.time() - started < 5
    await store.close()


def test_store_at_names_both_backends(tmp_path: Path) -> None:
    assert isinstance(store_at(f"sqlite:{tmp_path}/a.db"), type(store_at(str(tmp_path / "b"))))
    with pytest.raises(ValueError, match="no path"):
        store_at("sqlite:")


async def test_a_validated_write_is_rebuilt_when_another_node_wrote_first(
    store: RedisStore, raw: aioredis.Redis, prefix: str
) -> None:
    """put_validated: another node's write between the read and the EXEC (made here from
    inside the first build, over a connection of its own) voids the transaction; the build
    runs again on the new records and may then refuse. Nothing of a refused build is written."""
    key = f"{prefix}rec:inbound_trunk"
    other = sync_redis.Redis.from_url(store.url)
    seen: list[set[str]] = []

    def build(current: dict[str, bytes]) -> Record:
        seen.append(set(current))
        if len(seen) == 1:
            other.hset(key, "ST_other", b"theirs")  # between WATCH and EXEC
        if "ST_other" in current:
            raise ValueError("conflict with ST_other")
        return rec("inbound_trunk", "ST_mine", b"mine")

    try:
        with pytest.raises(ValueError, match="conflict with ST_other"):
            await store.put_validated("inbound_trunk", build)
    finally:
        other.close()
    assert seen == [set(), {"ST_other"}]
    assert store.watch_conflicts == 1
    assert await raw.hgetall(key) == {b"ST_other": b"theirs"}

    # Without interference it writes at once.
    made = await store.put_validated("outbound_trunk", lambda _: rec("outbound_trunk", "ST_o"))
    assert made.id == "ST_o" and (await store.get("outbound_trunk", "ST_o")) is not None


async def test_the_first_command_after_a_redis_restart_does_not_fail(tmp_path: Path) -> None:
    """Redis restarted (same port, its append-only file): the pool's connections are closed by
    the old server; the next commands are tried again on new connections instead of failing."""
    with redis_server(tmp_path / "redis", persistent=True) as server:
        store = RedisStore(server.url, prefix="restart:")
        await store.open()
        try:
            await asyncio.gather(*(store.put(rec("dispatch_rule", f"SDR_{i}")) for i in range(4)))
            server.restart()
            assert [r.id for r in await store.load("dispatch_rule")] == [
                f"SDR_{i}" for i in range(4)
            ]
            await store.put(rec("dispatch_rule", "SDR_after"))
        finally:
            await store.close()
