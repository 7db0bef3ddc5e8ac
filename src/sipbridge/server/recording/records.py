"""Recordings kept in the store: every `EgressInfo` as it changes, and each call's recordings.

An egress is written (kind `egress`, by egress id) on every status change, in order, in the
background, so a recording never waits on the disk; with it the node that records it. At start a
node finds the recordings it left in progress - the process died or was killed while writing -
and marks them FAILED with the reason: their file may be cut short, and says so. With SQLite
every record is this server's; with Redis (shared by nodes) only those of this node's id, so a
node's recordings are recovered by a restart under the same `--node-id`.

A call is linked to its recordings (kind `call_recordings`, by call id: the egress ids, JSON):
the room recordings of the room it is in, and the participant or track recordings of its own
audio. `call show ID` and `sipbridge.CallLog` read them back.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging

from livekit.protocol import egress as proto

from sipbridge.store import Record, RecordStore

log = logging.getLogger(__name__)

KIND = "egress"
CALL_KIND = "call_recordings"
Status = proto.EgressStatus
IN_PROGRESS = frozenset({Status.EGRESS_STARTING, Status.EGRESS_ACTIVE, Status.EGRESS_ENDING})
LOST = "the server stopped while recording: the file may be incomplete"
MAX_PENDING = 10_000
FLUSH_WAIT_S = 10.0


def encode(info: proto.EgressInfo, node: str) -> bytes:
    data = base64.b64encode(info.SerializeToString()).decode()
    return json.dumps({"node": node, "info": data}, sort_keys=True).encode()


def decode(data: bytes) -> tuple[proto.EgressInfo, str]:
    """(info, node) of a stored egress; ValueError when it is not one."""
    doc = json.loads(data)
    info = proto.EgressInfo.FromString(base64.b64decode(doc["info"]))
    return info, str(doc.get("node", ""))


def recording_summary(info: proto.EgressInfo) -> dict[str, object]:
    """What a call's record shows of one recording."""
    file = info.file_results[0] if info.file_results else proto.FileInfo()
    return {
        "egress_id": info.egress_id,
        "status": Status.Name(info.status).removeprefix("EGRESS_").lower(),
        "location": file.location,
        "duration_ms": file.duration // 1_000_000,
        "size": file.size,
        "error": info.error,
    }


class EgressRecords:
    def __init__(self, store: RecordStore, *, shared: bool) -> None:
        self.store = store
        self.shared = shared  # other nodes write the same records (Redis)
        self.node = ""
        self.dropped = 0
        self._lock = asyncio.Lock()
        self._writes: set[asyncio.Task[None]] = set()

    async def recover(self, node: str, now_ns: int) -> list[proto.EgressInfo]:
        """This node's stored recordings (every one, when the store is not shared), oldest
        first, those it left in progress marked FAILED (and written so)."""
        self.node = node
        found: list[proto.EgressInfo] = []
        lost: list[Record] = []
        for record in await self.store.load(KIND):
            try:
                info, owner = decode(record.data)
            except (ValueError, KeyError, TypeError):
                log.warning("stored egress %s is unreadable: skipped", record.id)
                continue
            if self.shared and owner != node:
                continue  # another node's: it lists and stops its own
            if info.status in IN_PROGRESS:
                info.status = Status.EGRESS_FAILED
                info.error = LOST
                info.ended_at = info.updated_at = now_ns
                lost.append(Record(kind=KIND, id=info.egress_id, data=encode(info, owner)))
            found.append(info)
        if lost:
            await self.store.put_many(lost)
            log.warning("%d recordings were in progress when the server stopped", len(lost))
        found.sort(key=lambda i: (i.updated_at, i.egress_id))
        return found

    def save(self, info: proto.EgressInfo) -> None:
        """Write this state of a recording, in the background, after those before it."""
        record = Record(kind=KIND, id=info.egress_id, data=encode(info, self.node))
        self._later(self._put, record)

    def forget(self, egress_id: str) -> None:
        self._later(self._delete, egress_id)

    def link_call(self, call_id: str, egress_id: str) -> None:
        """`call_id`'s audio is in recording `egress_id`."""
        self._later(self._link, call_id, egress_id)

    def _later(self, write: object, *args: object) -> None:
        if len(self._writes) >= MAX_PENDING:
            self.dropped += 1
            return
        task = asyncio.get_running_loop().create_task(self._in_order(write, *args))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _in_order(self, write: object, *args: object) -> None:
        async with self._lock:  # tasks take the lock in the order they were made
            try:
                await write(*args)  # type: ignore[operator]
            except Exception:
                log.exception("storing a recording's record failed")

    async def _put(self, record: Record) -> None:
        await self.store.put(record)

    async def _delete(self, egress_id: str) -> None:
        await self.store.delete(KIND, egress_id)

    async def _link(self, call_id: str, egress_id: str) -> None:
        ids = await self.call_ids(call_id)
        if egress_id not in ids:
            data = json.dumps([*ids, egress_id]).encode()
            await self.store.put(Record(kind=CALL_KIND, id=call_id, data=data))

    async def call_ids(self, call_id: str) -> list[str]:
        record = await self.store.get(CALL_KIND, call_id)
        return [str(i) for i in json.loads(record.data)] if record else []

    async def for_call(self, call_id: str) -> list[proto.EgressInfo]:
        """The recordings a call is in, as last stored (ones already forgotten left out)."""
        infos = []
        for egress_id in await self.call_ids(call_id):
            record = await self.store.get(KIND, egress_id)
            if record is not None:
                infos.append(decode(record.data)[0])
        return infos

    async def flush(self) -> None:
        """Wait (bounded) for the writes under way: at shutdown."""
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=FLUSH_WAIT_S)
