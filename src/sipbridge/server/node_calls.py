"""The calls of a node that dies (docs/cluster.md, failure cases), the asyncio side.

Every node lists the calls it holds in `node:{id}:calls` (`NodeCalls.record`, told of every
call-log record: a call is added with its first record and removed with the one that says it
ended), batched and written in the background; a write Redis refused is kept and tried again.

Every second each node also looks for dead nodes that left calls listed (`dead_with_calls`:
heartbeat expired, set not empty). The first to take the lock (`SET NX` with a 30 s expiry)
rewrites each of those calls' records that had not ended as ended now by node loss
(`telephony/node_loss.py`) and takes them out of the set. A node's heartbeat expires 5 s after
its last beat, so the calls of a node killed with SIGKILL are logged as ended within ~6 s.

A node that starts with its own id's set left over (it was killed, and restarted before anyone
looked) ends those calls itself before it takes new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from livekit.protocol import sip as proto
from redis.exceptions import RedisError

from sipbridge.store import Record, RecordStore
from sipbridge.store.redis_nodes import RedisNodes
from sipbridge.telephony.node_info import HEARTBEAT_S
from sipbridge.telephony.node_loss import ended_by_node_loss, has_ended

log = logging.getLogger(__name__)

CALL_KIND = "call"
FLUSH_EVERY_S = 0.05  # changes to the set are batched this long at most
MAX_PENDING = 100_000  # changes kept while Redis refuses them; beyond, the oldest are dropped
STOP_WAIT_S = 2.0


class NodeCalls:
    """This node's live calls in Redis, and the calls of dead nodes ended for them."""

    def __init__(
        self,
        node_id: str,
        nodes: RedisNodes,
        store: RecordStore,
        *,
        clock: Callable[[], float] = time.time,
        look_every: float = HEARTBEAT_S,
    ) -> None:
        self.node_id = node_id
        self.nodes = nodes
        self.store = store
        self.clock = clock
        self.look_every = look_every
        self._pending: dict[str, bool] = {}  # call id -> live (added) or ended (removed)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._failing = False
        self.reaped = 0  # calls of dead nodes this node ended

    def record(self, info: proto.SIPCallInfo) -> None:
        """A call-log record of this node's (every state of every call)."""
        if not info.call_id:
            return
        live = not has_ended(info)
        if self._pending.get(info.call_id) is live:
            return
        self._pending.pop(info.call_id, None)  # re-inserted last: the newest change wins
        self._pending[info.call_id] = live
        while len(self._pending) > MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))
        self._wake.set()

    async def start(self) -> None:
        """End what an earlier process of this node id left listed, then run."""
        with contextlib.suppress(RedisError, OSError):
            await self.end_calls_of(self.node_id)
        self._tasks = [
            asyncio.create_task(self._flush_forever(), name="node calls"),
            asyncio.create_task(self._look_forever(), name="dead nodes"),
        ]

    async def stop(self) -> None:
        """The last changes written (bounded), then stop looking."""
        self._stopping = True
        self._wake.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=STOP_WAIT_S)
            for task in pending:
                task.cancel()
            self._tasks = []

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()
            if self._stopping:
                return
            await asyncio.sleep(FLUSH_EVERY_S)

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        added = [c for c, live in batch.items() if live]
        removed = [c for c, live in batch.items() if not live]
        try:
            await self.nodes.track_calls(self.node_id, added, removed)
        except (RedisError, OSError) as exc:
            if not self._failing:
                log.warning("node %s: its calls not written to Redis: %s", self.node_id, exc)
            self._failing = True
            for call_id, live in batch.items():  # kept (newer changes win), tried again
                self._pending.setdefault(call_id, live)
            if not self._stopping:
                await asyncio.sleep(self.look_every)
                self._wake.set()
            return
        self._failing = False

    async def _look_forever(self) -> None:
        while not self._stopping:
            try:
                for node_id in await self.nodes.dead_with_calls():
                    if node_id != self.node_id:
                        await self.end_calls_of(node_id)
            except (RedisError, OSError):
                pass  # Redis away: the heartbeat warns; look again next time
            except Exception:
                log.exception("looking for dead nodes failed")
            await asyncio.sleep(self.look_every)

    async def end_calls_of(self, node_id: str) -> int:
        """If this node wins the lock: every call `node_id` listed ended by node loss; how
        many records were rewritten."""
        if not await self.nodes.claim(node_id, self.node_id):
            return 0
        call_ids = await self.nodes.calls_of(node_id)
        now_ns = int(self.clock() * 1e9)
        records = []
        for call_id in call_ids:
            stored = await self.store.get(CALL_KIND, call_id)
            data = None if stored is None else ended_by_node_loss(stored.data, node_id, now_ns)
            if data is not None:
                records.append(Record(kind=CALL_KIND, id=call_id, data=data))
        if records:
            await self.store.put_many(records)
        await self.nodes.forget(node_id, call_ids)
        self.reaped += len(records)
        if not call_ids:
            return 0
        log.warning(
            "node %s lost: %d of its %d call(s) logged as ended by node loss",
            node_id,
            len(records),
            len(call_ids),
        )
        return len(records)
