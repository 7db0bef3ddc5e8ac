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
        while (info := await self._queue.get()) is not None:
            try:
                await self.store.put(Record(kind=KIND, id=info.call_id, data=_bytes(info)))
            except Exception:
                log.exception("call log write failed for %s", info.call_id)

    async def list(self) -> list[proto.SIPCallInfo]:
        return [proto.SIPCallInfo.FromString(r.data) for r in await self.store.load(KIND)]

    def now_ns(self) -> int:
        return int(self.clock() * 1e9)


def _bytes(message: Message) -> bytes:
    return message.SerializeToString(deterministic=True)
