"""The call log: every call recorded in the store as a `SIPCallInfo`, kept across restarts.

Writes for one call are queued and applied in order in the background, so a call's progress
never waits on the disk and the last state written is the last state reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from google.protobuf.message import Message
from livekit.protocol import sip as proto

from sipbridge.store import Record, RecordStore

log = logging.getLogger(__name__)

KIND = "call"
MAX_PENDING = 10_000


class CallLog:
    def __init__(self, store: RecordStore, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        self._queue: asyncio.Queue[proto.SIPCallInfo | None] = asyncio.Queue(MAX_PENDING)
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="call log")

    async def stop(self) -> None:
        if self._task is None:
            return
        await self._queue.put(None)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, 10)
        self._task = None

    def record(self, info: proto.SIPCallInfo) -> None:
        """Queue the call's current state (a copy is taken)."""
        snapshot = proto.SIPCallInfo()
        snapshot.CopyFrom(info)
        try:
            self._queue.put_nowait(snapshot)
        except asyncio.QueueFull:  # the disk cannot keep up: count rather than block calls
            self.dropped += 1

    async def _run(self) -> None:
        """Write what has queued up since the last write in one transaction: one fsync for a
        burst of calls instead of one per state change; the latest state of a call wins."""
        stopping = False
        while not stopping:
            first = await self._queue.get()
            batch: dict[str, proto.SIPCallInfo] = {}
            item: proto.SIPCallInfo | None = first
            while True:
                if item is None:
                    stopping = True
                else:
                    batch[item.call_id] = item
                if self._queue.empty() or len(batch) >= 1000:
                    break
                item = self._queue.get_nowait()
            if not batch:
                continue
            records = [Record(kind=KIND, id=i.call_id, data=_bytes(i)) for i in batch.values()]
            try:
                await self.store.put_many(records)
            except Exception:
                log.exception("call log write of %d calls failed", len(records))

    async def list(self) -> list[proto.SIPCallInfo]:
        return [proto.SIPCallInfo.FromString(r.data) for r in await self.store.load(KIND)]

    def now_ns(self) -> int:
        return int(self.clock() * 1e9)


def _bytes(message: Message) -> bytes:
    return message.SerializeToString(deterministic=True)
