"""Redis store: the records of several nodes in one Redis, and a message after every change.

Keys (docs/cluster.md), all under a prefix (`sipbridge:` unless `--redis-prefix` says otherwise,
so that two clusters can share one Redis):

- `rec:{kind}`: a hash from record id to the record's bytes (a serialised protobuf message);
- `changes`: a pub/sub channel carrying `{kind} {id}` after each write of a kind that nodes
  cache (trunks and dispatch rules), published in the same MULTI/EXEC as the write, so that a
  node never hears of a change before it can read it.

Call records are kept apart, indexed for pages and filters (`store/redis_calls.py`: `call:{id}`,
`calls`, `calls:by:{field}:{value}`). Call and transfer records have no cache on any node to
invalidate, so their writes announce nothing: a busy call log would otherwise send every node a
message per call state.

Pub/sub delivers at most once and drops what was published while a subscriber was away:
`follow` therefore has the caller reload everything after every (re)subscription, the first one
included, and only then relies on the messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import cast
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError, WatchError

from sipbridge.store import redis_calls
from sipbridge.store.base import CACHED_KINDS, Record, StoreUnavailable, check_kind
from sipbridge.store.call_query import CallQuery
from sipbridge.store.redis_calls import FIELDS, FILTERS, Cursor, call_fields, matches

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "sipbridge:"
CONNECT_TIMEOUT_S = 5.0
# A subscription idle this long is checked with a PING: a Redis that vanished without closing
# the connection (a network split) is noticed, and the node resubscribes and reloads.
HEALTH_CHECK_S = 5.0
RETRY_FIRST_S = 0.05
COMMAND_RETRIES = 2  # a command that met a closed connection, tried again this often
RETRY_BASE_S = 0.01
RETRY_CAP_S = 0.1
RETRY_MAX_S = 1.0

CALL = "call"
WATCH_RETRIES = 20  # a validated write rebuilt after another node's write, at most this often
PAGE_CHUNK = 500  # calls read per round trip
SCAN_MAX = 20_000  # calls one page may look at before it returns what it found

OnChange = Callable[[str, str], Awaitable[None]]
OnResync = Callable[[], Awaitable[None]]


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisStore:
    """`RecordStore` on Redis (`redis://HOST:PORT/DB`, `rediss://` for TLS)."""

    def __init__(
        self, url: str, *, prefix: str = DEFAULT_PREFIX, call_log_max: int = redis_calls.DEFAULT_CAP
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.call_log_max = call_log_max  # calls kept; the oldest beyond are trimmed (0: all)
        self.changes_channel = f"{prefix}changes"
        self._client: aioredis.Redis | None = None
        self._feed_client: aioredis.Redis | None = None
        self._follower: asyncio.Task[None] | None = None
        self.resyncs = 0  # subscriptions made, each followed by a full reload
        self.watch_conflicts = 0  # validated writes rebuilt because another node wrote first

    def _key(self, kind: str) -> str:
        return f"{self.prefix}rec:{kind}"

    async def open(self) -> None:
        """Connect and check that Redis answers; `StoreUnavailable` if it does not."""
        client = aioredis.Redis.from_url(
            self.url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            health_check_interval=HEALTH_CHECK_S,
            # A pooled connection that Redis closed (it restarted) fails its next command: tried
            # again on a new connection, so that the first API call or write after a restart
            # does not fail for it. Every command here can be repeated (HSET, a call's Lua
            # replace, SADD/SREM; a repeated change message costs a reload).
            retry=Retry(ExponentialBackoff(cap=RETRY_CAP_S, base=RETRY_BASE_S), COMMAND_RETRIES),
        )
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
            raise StoreUnavailable(f"cannot reach Redis at {redacted(self.url)}: {exc}") from None
        self._client = client
        # The change feed's own pool, without retries: a lost subscription must be seen (and
        # followed by a full reload), not silently resubscribed by redis-py.
        self._feed_client = aioredis.Redis.from_url(
            self.url, socket_connect_timeout=CONNECT_TIMEOUT_S, health_check_interval=HEALTH_CHECK_S
        )
        self._put_calls = client.register_script(redis_calls.PUT_CALLS_LUA)
        self._delete_call = client.register_script(redis_calls.DELETE_CALL_LUA)

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        for client in (self._client, self._feed_client):
            if client is not None:
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()
        self._client = self._feed_client = None

    @property
    def client(self) -> aioredis.Redis:
        """The open connection pool, for the node heartbeat (`store/redis_nodes.py`)."""
        return self._redis()

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError("store is not open")
        return self._client

    def _call_key(self, call_id: str) -> str:
        return f"{self.prefix}call:{call_id}"

    async def load(self, kind: str) -> list[Record]:
        check_kind(kind)
        if kind == CALL:
            return await self._load_calls()
        # decode_responses is off: keys and values come back as bytes
        items = cast(dict[bytes, bytes], await self._redis().hgetall(self._key(kind)))
        return [
            Record(kind=kind, id=rid.decode(), data=data) for rid, data in sorted(items.items())
        ]

    async def get(self, kind: str, record_id: str) -> Record | None:
        check_kind(kind)
        key, field = (
            (self._call_key(record_id), "data") if kind == CALL else (self._key(kind), record_id)
        )
        data = cast(bytes | None, await self._redis().hget(key, field))
        return None if data is None else Record(kind=kind, id=record_id, data=data)

    async def put(self, record: Record) -> None:
        await self.put_many([record])

    async def put_many(self, records: list[Record]) -> None:
        """All the records and their change messages in one MULTI/EXEC: other nodes see all of
        them or none, and hear of them only once they can read them."""
        for record in records:
            check_kind(record.kind)
        if not records:
            return
        calls = [r for r in records if r.kind == CALL]
        call_args: list[str | bytes | int] = [self.prefix, self.call_log_max]
        for call in calls:
            fields = call_fields(call.data)
            call_args += [call.id, fields.score, call.data, *fields.values()]
        async with self._redis().pipeline(transaction=True) as pipe:
            if calls:
                await self._put_calls(args=call_args, client=pipe)
            for record in records:
                if record.kind != CALL:
                    pipe.hset(self._key(record.kind), record.id, record.data)
            for record in records:
                if record.kind in CACHED_KINDS:
                    pipe.publish(self.changes_channel, f"{record.kind} {record.id}")
            await pipe.execute()

    async def put_validated(self, kind: str, build: Callable[[dict[str, bytes]], Record]) -> Record:
        """Validate-and-write against every node's writes: `build` gets the kind's records as
        Redis has them now (id -> bytes) and returns the record to write (or raises: nothing
        is written). `WATCH rec:{kind}` makes the write fail if another node changed the kind
        in between; then it is built again from the new state, up to `WATCH_RETRIES` times.
        Two nodes creating conflicting records at once cannot both pass their checks."""
        check_kind(kind)
        key = self._key(kind)
        async with self._redis().pipeline(transaction=True) as pipe:
            for _ in range(WATCH_RETRIES):
                try:
                    await pipe.watch(key)
                    current = cast(dict[bytes, bytes], await pipe.hgetall(key))
                    record = build({rid.decode(): data for rid, data in current.items()})
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(key, record.id, record.data)
                    if kind in CACHED_KINDS:
                        pipe.publish(self.changes_channel, f"{kind} {record.id}")
                    await pipe.execute()
                    return record
                except WatchError:
                    self.watch_conflicts += 1
                    continue
        raise StoreUnavailable(f"{kind}: too many concurrent writes, try again")

    async def delete(self, kind: str, record_id: str) -> bool:
        check_kind(kind)
        if kind == CALL:
            deleted = await self._delete_call(args=[self.prefix, record_id])
            return bool(deleted)
        async with self._redis().pipeline(transaction=True) as pipe:
            pipe.hdel(self._key(kind), record_id)
            if kind in CACHED_KINDS:
                pipe.publish(self.changes_channel, f"{kind} {record_id}")
            results = await pipe.execute()
        return bool(results[0])

    # -- the call log ---------------------------------------------------------------------------

    async def _load_calls(self) -> list[Record]:
        """Every call (for `store copy`), in ascending id order, read in chunks."""
        redis = self._redis()
        ids = sorted(cast(list[bytes], await redis.zrange(f"{self.prefix}calls", 0, -1)))
        out: list[Record] = []
        for start in range(0, len(ids), PAGE_CHUNK):
            chunk = ids[start : start + PAGE_CHUNK]
            async with redis.pipeline(transaction=False) as pipe:
                for call_id in chunk:
                    pipe.hget(self._call_key(call_id.decode()), "data")
                datas = await pipe.execute()
            out += [
                Record(kind=CALL, id=call_id.decode(), data=data)
                for call_id, data in zip(chunk, datas, strict=True)
                if data is not None  # trimmed meanwhile
            ]
        return out

    async def call_page(
        self,
        *,
        limit: int = 100,
        page_token: str = "",
        since_ms: int = 0,
        until_ms: int = 0,
        **filters: str,
    ) -> tuple[list[bytes], str]:
        """Calls newest first, at most `limit`, after `page_token` (from the previous page),
        created in [`since_ms`, `until_ms`) when given, that match every filter given (`room`,
        `trunk`, `status`, `number`: caller or called); and the token of the next page ("" at
        the end). The same page as `SQLiteStore.call_page` (`store/call_query.py`).

        Walks the smallest index among the filters (or `calls`), checking the other filters on
        each record; a page that has scanned `SCAN_MAX` calls without filling ends there, with
        a token to go on."""
        unknown = set(filters) - set(FILTERS)
        if unknown:
            raise ValueError(f"unknown call filter(s): {', '.join(sorted(unknown))}")
        CallQuery(
            limit=limit, page_token=page_token, since_ms=since_ms, until_ms=until_ms, **filters
        ).check()
        wanted = {name: value for name, value in filters.items() if value}
        redis = self._redis()
        key = f"{self.prefix}calls"
        if wanted:
            keys = [redis_calls.index_key(self.prefix, n, v) for n, v in wanted.items()]
            async with redis.pipeline(transaction=False) as pipe:
                for k in keys:
                    pipe.zcard(k)
                sizes = await pipe.execute()
            key = min(zip(sizes, keys, strict=True))[1]
        cursor = Cursor.parse(page_token) if page_token else None
        # From the cursor's score down (ties with it are skipped by id below), by offset.
        top: str | int = cursor.score if cursor else "+inf"
        if until_ms and (cursor is None or cursor.score >= until_ms):
            top = until_ms - 1  # scores are whole ms: before `until_ms`
        bottom: str | int = since_ms or "-inf"
        found: list[bytes] = []
        position = cursor  # the last call looked at
        offset = 0
        while offset < SCAN_MAX:
            batch = cast(
                list[tuple[bytes, float]],
                await redis.zrevrangebyscore(
                    key, top, bottom, start=offset, num=PAGE_CHUNK, withscores=True
                ),
            )
            offset += len(batch)
            candidates = [(call_id.decode(), int(score)) for call_id, score in batch]
            if cursor is not None:
                candidates = [c for c in candidates if cursor.after(c[1], c[0])]
            async with redis.pipeline(transaction=False) as pipe:
                for call_id, _ in candidates:
                    pipe.hmget(self._call_key(call_id), "data", *FIELDS)
                rows = await pipe.execute()
            for (call_id, score), row in zip(candidates, rows, strict=True):
                position = Cursor(score, call_id)
                if row[0] is None:  # trimmed meanwhile
                    continue
                stored = {f: (v or b"").decode() for f, v in zip(FIELDS, row[1:], strict=True)}
                if matches(stored, wanted):
                    found.append(row[0])
                    if len(found) == limit:
                        return found, position.token()
            if len(batch) < PAGE_CHUNK:
                return found, ""  # the end of the log
        # Looked at SCAN_MAX calls without filling the page: what was found, and where to go on.
        return found, position.token() if position is not None else ""

    async def prune_calls(self, before_ms: int) -> int:
        """Remove the calls created before `before_ms` (the retention, `--call-log-days`),
        `PAGE_CHUNK` per round trip, each by the script that unindexes it; how many went."""
        redis = self._redis()
        removed = 0
        while True:
            ids = cast(
                list[bytes],
                await redis.zrangebyscore(
                    f"{self.prefix}calls", "-inf", f"({before_ms}", start=0, num=PAGE_CHUNK
                ),
            )
            if not ids:
                return removed
            async with redis.pipeline(transaction=False) as pipe:
                for call_id in ids:
                    await self._delete_call(args=[self.prefix, call_id.decode()], client=pipe)
                results = await pipe.execute()
            removed += sum(1 for r in results if r)

    async def follow(self, on_change: OnChange, on_resync: OnResync) -> None:
        """Subscribe to `changes`, then `await on_resync()` (a full reload); return once that
        is done, and from then on call `on_change(kind, id)` for each change, in order.

        In the background: when the subscription drops (Redis restarting, a network split),
        subscribe again as soon as Redis answers and call `on_resync` again, for the messages
        published meanwhile are lost. The first subscription's failure is raised here."""
        if self._follower is not None:
            raise RuntimeError("already following")
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._follower = asyncio.create_task(
            self._follow(on_change, on_resync, ready), name="redis changes"
        )
        await ready

    async def _follow(
        self, on_change: OnChange, on_resync: OnResync, ready: asyncio.Future[None]
    ) -> None:
        delay = RETRY_FIRST_S
        while True:
            assert self._feed_client is not None
            pubsub = self._feed_client.pubsub()
            try:
                await pubsub.subscribe(self.changes_channel)
                # The confirmation: from here on no change is missed, so the reload that
                # follows cannot be older than the messages after it.
                confirmation = await pubsub.get_message(timeout=CONNECT_TIMEOUT_S)
                if confirmation is None or confirmation.get("type") != "subscribe":
                    raise ConnectionError(f"no subscription confirmation: {confirmation!r}")
                self.resyncs += 1
                await on_resync()
                if not ready.done():
                    ready.set_result(None)
                delay = RETRY_FIRST_S
                while True:
                    message = await pubsub.get_message(timeout=HEALTH_CHECK_S)
                    if message is None or message.get("type") != "message":
                        continue
                    kind, _, record_id = bytes(message["data"]).decode().partition(" ")
                    await on_change(kind, record_id)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if not ready.done():
                    ready.set_exception(StoreUnavailable(f"cannot follow changes in Redis: {exc}"))
                    return
                log.warning("lost the Redis change feed (%s); resubscribing", exc)
            except Exception as exc:  # a cache that failed to load: resubscribe, reload
                if not ready.done():
                    ready.set_exception(exc)
                    return
                log.exception("applying a change from Redis failed; reloading everything")
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
