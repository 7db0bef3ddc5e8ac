"""The call log: every call recorded in the store as a `SIPCallInfo`, kept across restarts.

Writes for one call are queued and applied in order in the background, so a call's progress
never waits on the disk and the last state written is the last state reached.

Group commit: what queued up is written in one transaction (`put_many`: one fsync with SQLite,
one MULTI/EXEC with Redis), in the store's own thread for SQLite; everything that queues while
that commit syncs goes in the next one, so a burst of calls costs a few commits, not one per
record (`commits` and `records_written`, in /metrics). A first record after a quiet spell waits
`WRITE_WINDOW_S` for the states that follow it (a call rings, is answered and is up within a
few ms): a commit of one record costs 0.14 ms of CPU and one of 50 records 0.6 ms (SQLite, on
the 2-core machine, issue 18), so a commit per record would cost more than the wait. For the
same reason commits begin at least `WRITE_WINDOW_S` apart while calls keep coming (unless the
writes fall behind): otherwise each would follow the last as soon as its fsync returned.
What a crash can lose: records not yet in a commit that returned (queued, or in the commit
under way) - never one whose commit returned (`synchronous=FULL` with SQLite; with Redis, its
own persistence settings). The API reads the store: a call shows there once its batch is in.

Nothing here holds the log in memory: a page (`page`) is read from the store's indexes
(`SQLiteStore.call_page`, `RedisStore.call_page`), and calls older than the retention
(`--call-log-days`) are removed by a background task, in chunks, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol, cast

from google.protobuf.message import Message
from livekit.protocol import sip as proto
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sipbridge.store import Record, RecordStore
from sipbridge.store.call_query import CallQuery

log = logging.getLogger(__name__)

KIND = "call"
TRANSFER_KIND = "transfer"
# A call's media quality (`media/quality.py`), JSON by call id: our own record beside the
# `SIPCallInfo`, which has no field for it; rewritten while the call runs and at its end.
QUALITY_KIND = "call_quality"
MAX_PENDING = 10_000
MAX_BATCH = 1000  # records in one transaction
WRITE_WINDOW_S = 0.05  # how long a first change waits for others to be written with it
# The store out of reach (Redis restarting, a split): a write is tried again after this, doubled
# up to RETRY_MAX_S.
TRANSIENT: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 1.0
DEFAULT_RETENTION_DAYS = 30
PRUNE_EVERY_S = 3600.0  # retention is in days: an hour late is nothing


class CallPages(Protocol):
    """A store that pages and prunes the call log itself (both of ours)."""

    async def call_page(
        self,
        *,
        limit: int = 100,
        page_token: str = "",
        since_ms: int = 0,
        until_ms: int = 0,
        **filters: str,
    ) -> tuple[list[bytes], str]: ...

    async def prune_calls(self, before_ms: int) -> int: ...


def call_pages(store: RecordStore) -> CallPages | None:
    """`store` if it is `CallPages` (what `isinstance` on a runtime-checkable Protocol says,
    which a Protocol compiled by mypyc cannot be)."""
    methods = (getattr(store, name, None) for name in ("call_page", "prune_calls"))
    return cast(CallPages, store) if all(map(callable, methods)) else None


class CallLog:
    def __init__(
        self,
        store: RecordStore,
        clock: Callable[[], float],
        *,
        retention_days: int = DEFAULT_RETENTION_DAYS,
        prune_every: float = PRUNE_EVERY_S,
    ) -> None:
        self.store = store
        self.clock = clock
        self.retention_days = retention_days  # 0: keep every call
        self.prune_every = prune_every
        self.pruned = 0  # calls removed by the retention so far
        self._pruner: asyncio.Task[None] | None = None
        # What is waiting to be written, by (kind, id), in the order first queued: a call's
        # `SIPCallInfo` (serialised when written, so the latest state of a call wins and a call
        # that changes state twice before a write is written once) or a record's bytes.
        self._pending: dict[tuple[str, str], proto.SIPCallInfo | bytes] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.commits = 0  # transactions written (each one fsync with SQLite)
        self.records_written = 0  # records in them (a call's states in one write count once)
        self.waiting = 0  # records kept while the store is out of reach
        self._closing = False  # stop() begun: a record kept for an absent store is given up
        self._transfer_writes: set[asyncio.Task[None]] = set()
        self._transfer_lock = asyncio.Lock()
        # Told of every state recorded (the SIP trace learns our call id for the Call-ID).
        self.on_record: Callable[[proto.SIPCallInfo], None] | None = None
        # Told of each quality record as it is taken (the console keeps them over time).
        self.on_quality: Callable[[str, dict[str, Any]], None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="call log")
        if self.retention_days > 0 and call_pages(self.store) is not None:
            self._pruner = asyncio.create_task(self._prune_forever(), name="call log retention")

    async def _prune_forever(self) -> None:
        """Remove the calls older than the retention now, then every `prune_every` seconds."""
        while True:
            await self.prune()
            await asyncio.sleep(self.prune_every)

    async def prune(self) -> int:
        """Remove the calls created more than `retention_days` ago; how many went."""
        pages = call_pages(self.store)
        if self.retention_days <= 0 or pages is None:
            return 0
        before_ms = int((self.clock() - self.retention_days * 86400) * 1000)
        try:
            removed = await pages.prune_calls(before_ms)
        except Exception:
            log.exception(
                "call log retention: removing calls older than %d days failed", self.retention_days
            )
            return 0
        optimize = getattr(self.store, "optimize", None)
        if optimize is not None:  # SQLite: fresh statistics for picking indexes
            with contextlib.suppress(Exception):
                await optimize()
        if removed:
            self.pruned += removed
            log.info(
                "call log retention: removed %d calls older than %d days",
                removed,
                self.retention_days,
            )
        return removed

    async def stop(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
            self._pruner = None
        self._closing = True
        if self._transfer_writes:
            await asyncio.wait(self._transfer_writes, timeout=10)
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, 10)
        self._task = None

    def record(self, info: proto.SIPCallInfo) -> None:
        """Queue the call's current state: what it is when the next write happens (a copy is
        taken then, so a state written is always one the call was in between two steps)."""
        if self.on_record is not None:
            self.on_record(info)
        self._queue_write((KIND, info.call_id), info)

    def _queue_write(self, key: tuple[str, str], item: proto.SIPCallInfo | bytes) -> None:
        if key not in self._pending and len(self._pending) >= MAX_PENDING:
            self.dropped += 1  # the disk cannot keep up: count rather than block calls
            return
        self._pending[key] = item
        self._wake.set()

    async def _run(self) -> None:
        """Write what has queued up since the last write in one transaction: one fsync for a
        burst of calls instead of one per state change; the latest state of a call wins.

        While the store is out of reach (Redis restarting) what could not be written is kept,
        with what queues up meanwhile (a newer state of a record wins), up to `MAX_PENDING`
        records (beyond, new ones are counted as dropped), and tried again, backing off; when the
        log stops meanwhile, one last try, then what is kept is counted as dropped. Any other
        failure costs the batch, logged."""
        delay = RETRY_FIRST_S
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if not self._stopping:
                # A call rings, is answered and is up within a few ms: gathering a little
                # writes its states once, and a burst of calls in one transaction.
                await asyncio.sleep(WRITE_WINDOW_S)
            self._wake.clear()
            while self._pending:
                batch = self._take(MAX_BATCH)
                began = loop.time()
                try:
                    await self.store.put_many(batch)
                except TRANSIENT as exc:
                    self._keep(batch)
                    if self._stopping:
                        self.dropped += len(self._pending)
                        log.error("call log: %d records not written (stopping)", len(self._pending))
                        self._pending.clear()
                        self.waiting = 0
                        return
                    if self.waiting == 0:
                        log.warning("call log: store out of reach, records kept: %s", exc)
                    self.waiting = len(self._pending)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                except Exception:
                    log.exception("call log write of %d records failed", len(batch))
                else:
                    self.commits += 1
                    self.records_written += len(batch)
                if self.waiting:
                    log.info("call log: store back, kept records written")
                    self.waiting = 0
                delay = RETRY_FIRST_S
                # Under a steady flow of calls something is always pending when a commit
                # returns: the next waits out the window from this one's start (unless behind,
                # or stopping), so the commits stay WRITE_WINDOW_S apart instead of following
                # each other as fast as the disk syncs (100+ a second at 200 calls/s).
                rest = began + WRITE_WINDOW_S - loop.time()
                if rest > 0 and 0 < len(self._pending) < MAX_BATCH and not self._stopping:
                    await asyncio.sleep(rest)
            if self._stopping:
                return

    def _keep(self, batch: list[Record]) -> None:
        """A batch the store did not take, back in front of what queued up since; a newer state
        of the same record, queued meanwhile, wins."""
        kept: dict[tuple[str, str], proto.SIPCallInfo | bytes] = {
            (r.kind, r.id): r.data for r in batch if (r.kind, r.id) not in self._pending
        }
        kept.update(self._pending)
        self._pending = kept

    def _take(self, limit: int) -> list[Record]:
        """Up to `limit` pending writes, oldest first, serialised now."""
        keys = []
        for key in self._pending:
            keys.append(key)
            if len(keys) >= limit:
                break
        records = []
        for key in keys:
            item = self._pending.pop(key)
            data = item if isinstance(item, bytes) else _bytes(item)
            records.append(Record(kind=key[0], id=key[1], data=data))
        return records

    def record_transfer(self, info: proto.SIPTransferInfo) -> None:
        """A transfer's current state, written in the background (by its `STR_` id)."""
        record = Record(kind=TRANSFER_KIND, id=info.transfer_id, data=_bytes(info))
        if len(self._transfer_writes) >= MAX_PENDING:
            self.dropped += 1
            return
        task = asyncio.get_running_loop().create_task(self._put_transfer(record))
        self._transfer_writes.add(task)
        task.add_done_callback(self._transfer_writes.discard)

    async def _put_transfer(self, record: Record) -> None:
        async with self._transfer_lock:  # in order: the last state written is the last reached
            await self._put_kept(record, f"transfer {record.id}")

    async def _put_kept(self, record: Record, what: str) -> None:
        """One record written; while the store is out of reach, tried again (backing off)
        until it is back or the log stops."""
        delay = RETRY_FIRST_S
        while True:
            try:
                await self.store.put_many([record])
                self.commits += 1
                self.records_written += 1
                return
            except TRANSIENT:
                if self._stopping or self._closing:
                    self.dropped += 1
                    log.error("call log: %s not written (stopping)", what)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            except Exception:
                log.exception("call log write of %s failed", what)
                return

    async def page(self, query: CallQuery) -> tuple[list[proto.SIPCallInfo], str]:
        """One page of the log (`store/call_query.py`) and the next page's token ("" at the
        end). ValueError when the query is wrong (`CallQuery.check`)."""
        datas, token = await self.page_bytes(query)
        return [proto.SIPCallInfo.FromString(data) for data in datas], token

    async def page_bytes(self, query: CallQuery) -> tuple[list[bytes], str]:
        """`page` as each call's serialised `SIPCallInfo`, as stored."""
        query.check()
        pages = call_pages(self.store)
        if pages is None:
            raise TypeError(f"{type(self.store).__name__} cannot page the call log")
        return await pages.call_page(
            limit=query.limit,
            page_token=query.page_token,
            since_ms=query.since_ms,
            until_ms=query.until_ms,
            **query.filters(),
        )

    async def list(self, limit: int = 100) -> list[proto.SIPCallInfo]:
        """The newest `limit` calls (a page; the log is never read whole)."""
        calls, _ = await self.page(CallQuery(limit=limit))
        return calls

    def record_quality(self, call_id: str, quality: dict[str, Any]) -> None:
        """A call's quality now (`LegQuality.as_dict()`), written with the next batch of call
        states (a later snapshot of the same call replaces one not written yet)."""
        if self.on_quality is not None:
            self.on_quality(call_id, quality)
        data = json.dumps(quality, sort_keys=True).encode()
        self._queue_write((QUALITY_KIND, call_id), data)

    async def quality(self, call_id: str) -> dict[str, Any] | None:
        """The last quality recorded for a call, or None."""
        record = await self.store.get(QUALITY_KIND, call_id)
        return None if record is None else dict(json.loads(record.data))

    def now_ns(self) -> int:
        return int(self.clock() * 1e9)


def _bytes(message: Message) -> bytes:
    return message.SerializeToString(deterministic=True)
