"""Webhooks, signed as LiveKit signs them, delivered in the background with retries (WIRE.md s3).

Each receiver URL has its own bounded queue and one sender task, so events reach a receiver in
order, a slow or dead receiver delays only itself, and `notify` never waits: when a queue is full
the oldest event is dropped and counted (reported in the next event's `num_dropped`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from google.protobuf import json_format
from livekit.protocol import models
from livekit.protocol.egress import EgressInfo
from livekit.protocol.webhook import WebhookEvent

from sipbridge import ids
from sipbridge.server.api.auth import body_sha256, sign_token

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1000
REQUEST_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    attempts: int = 6
    first_delay_s: float = 0.5
    max_delay_s: float = 30.0

    def delay(self, attempt: int) -> float:
        return float(min(self.first_delay_s * 2**attempt, self.max_delay_s))


class _Receiver:
    def __init__(self, url: str) -> None:
        self.url = url
        self.queue: deque[WebhookEvent] = deque()
        self.wakeup = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.dropped = 0
        self.sending = False
        self.task: asyncio.Task[None] | None = None


class WebhookNotifier:
    def __init__(
        self,
        urls: Sequence[str],
        api_key: str,
        api_secret: str,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        self.retry = retry or RetryPolicy()
        self.receivers = [_Receiver(url) for url in urls]
        self.stats: Counter[str] = Counter()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if not self.receivers:
            return
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        )
        for receiver in self.receivers:
            receiver.task = asyncio.create_task(self._run(receiver), name=f"webhook {receiver.url}")

    async def stop(self, drain_s: float = 2.0, limit_s: float = 10.0) -> None:
        """Let the queued events go out while they do, then stop: the wait goes on as long as
        every `drain_s` sees one delivered, `limit_s` at most. A node stopping under load ends
        rooms, participants and recordings at once (a dozen events), and a busy receiver may
        take longer than one `drain_s` for them all; a dead or hung one gets `drain_s` only.
        What is left unsent is logged and counted (`unsent`)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + limit_s
        while not all(receiver.idle.is_set() for receiver in self.receivers):
            delivered = self.stats["delivered"]
            window = min(drain_s, end - loop.time())
            if window <= 0:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(window):
                    for receiver in self.receivers:
                        await receiver.idle.wait()
            if self.stats["delivered"] == delivered:  # none went out: the receivers are stuck
                break
        unsent = sum(len(receiver.queue) for receiver in self.receivers)
        if unsent:
            self.stats["unsent"] += unsent
            log.warning("stopping with %d webhook event(s) unsent", unsent)
        for receiver in self.receivers:
            if receiver.task is not None:
                receiver.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await receiver.task
        if self._session is not None:
            await self._session.close()

    def notify(
        self,
        event: str,
        *,
        room: models.Room | None = None,
        participant: models.ParticipantInfo | None = None,
        track: models.TrackInfo | None = None,
        egress_info: EgressInfo | None = None,
    ) -> None:
        if not self.receivers:
            return
        message = WebhookEvent(
            event=event, id=ids.new_id(ids.WEBHOOK_EVENT), created_at=int(time.time())
        )
        if room is not None:
            message.room.CopyFrom(room)
        if participant is not None:
            message.participant.CopyFrom(participant)
        if track is not None:
            message.track.CopyFrom(track)
        if egress_info is not None:
            message.egress_info.CopyFrom(egress_info)
        for receiver in self.receivers:
            if len(receiver.queue) >= QUEUE_LIMIT:
                # Drop the oldest event not being sent right now (the head may be in flight).
                del receiver.queue[1 if receiver.sending else 0]
                receiver.dropped += 1
                self.stats["dropped"] += 1
            copy = WebhookEvent()
            copy.CopyFrom(message)  # num_dropped is per receiver
            receiver.queue.append(copy)
            receiver.idle.clear()
            receiver.wakeup.set()

    async def _run(self, receiver: _Receiver) -> None:
        while True:
            await receiver.wakeup.wait()
            receiver.wakeup.clear()
            while receiver.queue:
                event = receiver.queue[0]
                if receiver.dropped:
                    event.num_dropped = receiver.dropped
                    receiver.dropped = 0
                receiver.sending = True
                try:
                    delivered = await self._deliver(receiver.url, event)
                except Exception:  # never let one bad event stop this receiver's queue
                    log.exception("webhook %s to %s failed", event.event, receiver.url)
                    delivered = False
                finally:
                    receiver.sending = False
                self.stats["delivered" if delivered else "failed"] += 1
                receiver.queue.popleft()
            receiver.idle.set()

    async def _deliver(self, url: str, event: WebhookEvent) -> bool:
        body = json_format.MessageToJson(event, indent=None).encode()
        for attempt in range(self.retry.attempts):
            token = sign_token(self.api_key, self.api_secret, sha256=body_sha256(body))
            headers = {"Content-Type": "application/webhook+json", "Authorization": token}
            assert self._session is not None
            try:
                # no redirects: a receiver's 3xx must not send signed events elsewhere
                async with self._session.post(
                    url, data=body, headers=headers, allow_redirects=False
                ) as resp:
                    if resp.status < 300:
                        return True
                    reason = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = type(exc).__name__
            self.stats["retries"] += 1
            log.debug("webhook %s to %s failed (%s), attempt %d", event.event, url, reason, attempt)
            if attempt + 1 < self.retry.attempts:
                await asyncio.sleep(self.retry.delay(attempt))
        log.warning("webhook %s to %s dropped after %d attempts", event.event, url, attempt + 1)
        return False
