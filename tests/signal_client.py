"""Raw clients of `/rtc/v1` and `/rtc`, speaking the official protobuf messages.

`SignalClient` joins a room the way the official SDK does (token in the Authorization header,
gzipped WrappedJoinRequest in the query) and collects what the server sends; it opens no peer
connection. `PeerClient` adds real aiortc peer connections and speaks what livekit-client sends
(WIRE.md s4): single-PC on `/rtc/v1` with the offer in the join, or after it as Firefox and
clients before 2.19 send it (`defer_offer`), or two-PC on `/rtc` (`two_pc`) - it answers the
server's subscriber offer, offers its publisher connection, and trickles its candidates with
their `target` instead of putting them in its descriptions, as libwebrtc does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fractions
import gzip
import json
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp
from livekit import api
from livekit.protocol import models, rtc

from sipbridge.server.rtc.aiortc_patches import start_missed_media
from tests.harness import eventually
from tests.helpers import API_KEY, API_SECRET


def join_token(room: str, identity: str, **grants: Any) -> str:
    tok = api.AccessToken(API_KEY, API_SECRET).with_identity(identity)
    name = grants.pop("name", "")
    if name:
        tok.with_name(name)
    attributes = grants.pop("attributes", None)
    if attributes:
        tok.with_attributes(attributes)
    kind = grants.pop("kind", None)
    if kind:
        tok.with_kind(kind)
    tok.with_grants(api.VideoGrants(room_join=True, room=room, **grants))
    return tok.to_jwt()


def join_query(join: rtc.JoinRequest | None = None) -> str:
    wrapped = rtc.WrappedJoinRequest(
        compression=rtc.WrappedJoinRequest.Compression.GZIP,
        join_request=gzip.compress((join or rtc.JoinRequest()).SerializeToString()),
    )
    return base64.urlsafe_b64encode(wrapped.SerializeToString()).decode().rstrip("=")


class SignalClient:
    def __init__(self, url: str, room: str, identity: str, **grants: Any) -> None:
        self.url = url.replace("http://", "ws://")
        self.token = join_token(room, identity, **grants)
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.received: asyncio.Queue[rtc.SignalResponse] = asyncio.Queue()
        self.log: list[rtc.SignalResponse] = []  # everything received, in order
        self.join: rtc.JoinResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None

    async def connect(
        self, timeout: float = 5.0, join: rtc.JoinRequest | None = None
    ) -> rtc.JoinResponse:
        first = await self.open(join, timeout)
        assert first.WhichOneof("message") == "join", first
        self.join = first.join
        return first.join

    async def resume(self, timeout: float = 5.0) -> rtc.SignalResponse:
        """Reconnect after `drop()` as the SDK does: reconnect=true and the participant sid."""
        assert self.join is not None
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)
        if self.session is not None:
            await self.session.close()
        while not self.received.empty():  # the old WebSocket's, unread
            self.received.get_nowait()
        join = rtc.JoinRequest(reconnect=True, participant_sid=self.join.participant.sid)
        return await self.open(join, timeout)

    def path(self, join: rtc.JoinRequest | None) -> str:
        return f"/rtc/v1?join_request={join_query(join)}"

    async def open(self, join: rtc.JoinRequest | None, timeout: float) -> rtc.SignalResponse:
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(
            f"{self.url}{self.path(join)}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=aiohttp.ClientWSTimeout(ws_close=2),
        )
        self._reader = asyncio.create_task(self._read())
        first = await self.next(timeout)
        joined = first.join if first.WhichOneof("message") == "join" else self.join
        if joined is not None and first.WhichOneof("message") in ("join", "reconnect"):
            self._pinger = asyncio.create_task(self._ping(joined.ping_interval or 5))
        return first

    async def _ping(self, interval: float) -> None:
        """Ping as the SDKs do, every `ping_interval` of the join (the server ends a WebSocket
        silent for `ping_timeout`), with the legacy `ping`: its `pong` answers are kept out of
        `received`, so a test's own `ping_req` and its `pong_resp` stay its own."""
        ws = self.ws
        while ws is not None and not ws.closed:
            await asyncio.sleep(interval)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_bytes(rtc.SignalRequest(ping=1).SerializeToString())

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                message = rtc.SignalResponse.FromString(msg.data)
                if message.WhichOneof("message") == "pong":
                    continue  # the answer to our keepalive
                self.log.append(message)
                self.on_message(message)
                await self.received.put(message)

    def on_message(self, message: rtc.SignalResponse) -> None:
        """A message from the server, as it arrives (PeerClient acts on some)."""

    async def next(self, timeout: float = 5.0) -> rtc.SignalResponse:
        return await asyncio.wait_for(self.received.get(), timeout)

    async def wait_for(self, kind: str, timeout: float = 5.0) -> rtc.SignalResponse:
        """The next message of a kind, skipping others."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.received.get()
                if msg.WhichOneof("message") == kind:
                    return msg

    async def send(self, request: rtc.SignalRequest) -> None:
        assert self.ws is not None
        await self.ws.send_bytes(request.SerializeToString())

    async def publish_audio(self, cid: str = "mic") -> models.TrackInfo:
        await self.send(
            rtc.SignalRequest(
                add_track=rtc.AddTrackRequest(
                    cid=cid,
                    name="microphone",
                    type=models.TrackType.AUDIO,
                    source=models.TrackSource.MICROPHONE,
                )
            )
        )
        published = await self.wait_for("track_published")
        return published.track_published.track

    @property
    def closed(self) -> bool:
        return self.ws is None or self.ws.closed

    async def close(self) -> None:
        """Leave as the official SDK does: a `leave` request, then the WebSocket closed."""
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.send(rtc.SignalRequest(leave=rtc.LeaveRequest()))
        await self.drop()

    async def drop(self) -> None:
        """The WebSocket closed without a `leave`: a dropped connection the client may resume."""
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
            self._pinger = None
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)
        if self.session is not None:
            await self.session.close()

    async def __aenter__(self) -> SignalClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


RATE = 48000
FRAME = RATE // 50  # 20 ms
Target = rtc.SignalTarget


class Tone(MediaStreamTrack):
    """A microphone that plays a sine at -12 dBFS, paced in 20 ms frames."""

    kind = "audio"

    def __init__(self, hz: float) -> None:
        super().__init__()
        self.hz = hz
        self.pts = 0
        self.start: float | None = None

    async def recv(self) -> av.AudioFrame:
        loop = asyncio.get_running_loop()
        if self.start is None:
            self.start = loop.time()
        wait = self.start + self.pts / RATE - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        t = (self.pts + np.arange(FRAME)) / RATE
        pcm = (0.25 * 32767 * np.sin(2 * np.pi * self.hz * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self.pts, fractions.Fraction(1, RATE)
        self.pts += FRAME
        return frame


def _without_candidates(sdp: str) -> tuple[str, list[str]]:
    """libwebrtc's way: the description without candidates, which go as trickles."""
    kept, trickled = [], []
    mid, index = "", -1
    for line in sdp.splitlines():
        if line.startswith("m="):
            index, mid = index + 1, ""
        elif line.startswith("a=mid:"):
            mid = line[6:]
        if line.startswith("a=candidate:"):
            trickled.append(
                json.dumps({"candidate": line[2:], "sdpMid": mid, "sdpMLineIndex": index})
            )
        elif not line.startswith("a=end-of-candidates"):
            kept.append(line)
    return "\r\n".join(kept) + "\r\n", trickled


def _peer_connection() -> RTCPeerConnection:
    # max-bundle as livekit-client; the data channels are made just before the first offer,
    # after its sections (aiortc would otherwise give them a transport the BUNDLE then stops)
    return RTCPeerConnection(
        RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    )


class PeerClient(SignalClient):
    """A client with aiortc peer connections, as livekit-client makes them (see the module's
    docstring). `levels`: the RMS of each 20 ms heard, by remote track id; `data`: the data
    packets received. Run its server with WebRTC on loopback and patch this process's aioice
    to loopback too (`restrict_host_addresses(["127.0.0.1"])`)."""

    def __init__(
        self,
        url: str,
        room: str,
        identity: str,
        *,
        two_pc: bool = False,
        defer_offer: bool = False,
        **grants: Any,
    ) -> None:
        super().__init__(url, room, identity, **grants)
        self.two_pc = two_pc
        self.defer_offer = defer_offer
        self.publisher = _peer_connection()  # the only one in single-PC mode
        self.subscriber = _peer_connection() if two_pc else None
        self.channels: dict[str, RTCDataChannel] = {}  # on the publisher, from its first offer
        self.offer_id = 0
        self.negotiation = asyncio.Lock()
        self.answered_ids: list[int] = []  # ids of the publisher answers applied
        self.subscriber_answers = 0
        self.levels: dict[str, list[float]] = {}
        self.data: list[models.DataPacket] = []
        self.work: asyncio.Queue[rtc.SignalResponse] = asyncio.Queue()
        self.worker: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.answer_subscriber = True  # False: a client that never answers our offer
        for pc in (self.publisher, self.subscriber):
            if pc is not None:
                pc.on("track", self._on_track)
                pc.on("datachannel", self._on_channel)
                pc.on("connectionstatechange", self._connection_up(pc))

    # -- joining --------------------------------------------------------------------------

    def path(self, join: rtc.JoinRequest | None) -> str:
        if not self.two_pc:
            return super().path(join)
        # what livekit-client and the Python SDK send on `/rtc`: query parameters, no offer
        query = "auto_subscribe=1&sdk=js&version=2.5.0&protocol=16&adaptive_stream=0"
        if join is not None and join.reconnect:
            query += f"&reconnect=1&sid={join.participant_sid}"
        return f"/rtc?{query}"

    async def connect(
        self, timeout: float = 5.0, join: rtc.JoinRequest | None = None
    ) -> rtc.JoinResponse:
        self.worker = asyncio.create_task(self._work())
        if self.two_pc or self.defer_offer:
            joined = await super().connect(timeout, join)
            if not self.two_pc:
                await self.negotiate()  # the deferred first offer
            return joined
        self.prepare_receivers(3)
        offer = await self.local_offer()
        first = rtc.JoinRequest(publisher_offer=offer)
        if join is not None:
            first.MergeFrom(join)
        return await super().connect(timeout, first)

    def prepare_receivers(self, count: int) -> None:
        """Single-PC: recvonly audio sections for the server to put tracks on."""
        for _ in range(count):
            self.publisher.addTransceiver("audio", direction="recvonly")

    async def local_offer(self) -> rtc.SessionDescription:
        # as livekit-client does: a new offer once the last one is answered
        await eventually(lambda: self.publisher.signalingState == "stable", "an answer")
        self.offer_id += 1
        if not self.channels:
            for label, ordered in (("_reliable", True), ("_lossy", False)):
                self.channels[label] = self.publisher.createDataChannel(
                    label, ordered=ordered, maxRetransmits=None if ordered else 0
                )
                if not self.two_pc:  # single-PC: the server sends on the client's channels
                    self._on_channel(self.channels[label])
        await self.publisher.setLocalDescription(await self.publisher.createOffer())
        sdp, self.pending_trickles = _without_candidates(self.publisher.localDescription.sdp)
        return rtc.SessionDescription(type="offer", sdp=sdp, id=self.offer_id)

    async def negotiate(self) -> None:
        """(Re)offer the publisher connection, then trickle its candidates (PUBLISHER)."""
        async with self.negotiation:  # one offer at a time
            offer = await self.local_offer()
            await self.send(rtc.SignalRequest(offer=offer))
            await self._trickle(self.pending_trickles, Target.PUBLISHER)

    async def _trickle(self, candidates: list[str], target: int) -> None:
        for candidate in candidates:
            await self.send(
                rtc.SignalRequest(
                    trickle=rtc.TrickleRequest(candidateInit=candidate, target=target)
                )  # type: ignore[arg-type]
            )

    async def open(self, join: rtc.JoinRequest | None, timeout: float) -> rtc.SignalResponse:
        first = await super().open(join, timeout)
        if join is not None and join.publisher_offer.sdp:
            await self._trickle(self.pending_trickles, Target.PUBLISHER)
        return first

    async def publish_tone(self, hz: float) -> models.TrackInfo:
        """AddTrackRequest, then the tone on a sendonly section and a new offer."""
        tone = Tone(hz)
        info = await self.publish_audio(cid=tone.id)
        self.publisher.addTransceiver(tone, direction="sendonly")
        await self.negotiate()
        return info

    # -- what the server sends ------------------------------------------------------------

    def on_message(self, message: rtc.SignalResponse) -> None:
        if message.WhichOneof("message") in (
            "offer",
            "answer",
            "trickle",
            "media_sections_requirement",
        ):
            self.work.put_nowait(message)

    async def _work(self) -> None:
        """The server's descriptions and candidates, applied in order."""
        while True:
            message = await self.work.get()
            kind = message.WhichOneof("message")
            if kind == "answer":
                if message.answer.id == self.offer_id:  # an answer to an older offer: stale
                    await self.publisher.setRemoteDescription(
                        RTCSessionDescription(sdp=message.answer.sdp, type="answer")
                    )
                    self.answered_ids.append(message.answer.id)
            elif kind == "offer" and self.subscriber is not None and self.answer_subscriber:
                await self.subscriber.setRemoteDescription(
                    RTCSessionDescription(sdp=message.offer.sdp, type="offer")
                )
                await self.subscriber.setLocalDescription(await self.subscriber.createAnswer())
                sdp, candidates = _without_candidates(self.subscriber.localDescription.sdp)
                answer = rtc.SessionDescription(type="answer", sdp=sdp, id=message.offer.id)
                await self.send(rtc.SignalRequest(answer=answer))
                await self._trickle(candidates, Target.SUBSCRIBER)
                self.subscriber_answers += 1
            elif kind == "trickle":
                pc = self.publisher
                if message.trickle.target == Target.SUBSCRIBER and self.subscriber is not None:
                    pc = self.subscriber
                init = json.loads(message.trickle.candidateInit)
                candidate = candidate_from_sdp(init["candidate"].split(":", 1)[1])
                candidate.sdpMid = init["sdpMid"]
                candidate.sdpMLineIndex = init["sdpMLineIndex"]
                await pc.addIceCandidate(candidate)
            elif kind == "media_sections_requirement":
                # offered once the offer out is answered, which this loop must apply first
                self.prepare_receivers(message.media_sections_requirement.num_audios)
                task = asyncio.create_task(self.negotiate())
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    def _connection_up(self, pc: RTCPeerConnection) -> Any:
        """aiortc's receivers that a negotiation ending while DTLS was connecting left
        unstarted, started once the connection is up (as the server does)."""

        def changed() -> None:
            if pc.connectionState == "connected":
                task = asyncio.ensure_future(start_missed_media(pc))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

        return changed

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio":
            return
        levels = self.levels.setdefault(track.id, [])

        async def read() -> None:
            with contextlib.suppress(MediaStreamError):
                while True:
                    frame = await track.recv()
                    pcm = frame.to_ndarray().astype(np.float64) / 32768
                    levels.append(float(np.sqrt(np.mean(pcm**2))))

        task = asyncio.create_task(read())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _on_channel(self, channel: RTCDataChannel) -> None:
        def message(data: bytes | str) -> None:
            if isinstance(data, bytes):
                self.data.append(models.DataPacket.FromString(data))

        channel.on("message", message)

    def describe(self) -> str:
        """The client's connections and what it heard, for a failure's message."""
        pcs = {"publisher": self.publisher, "subscriber": self.subscriber}
        states = {name: pc.connectionState for name, pc in pcs.items() if pc is not None}
        heard = {track: len(levels) for track, levels in self.levels.items()}
        kinds = [message.WhichOneof("message") for message in self.log]
        worker = self.worker.exception() if self.worker and self.worker.done() else None
        return f"states {states}, frames {heard}, received {kinds}, worker error {worker!r}"

    def heard(self, track_sid: str, above: float = 0.05) -> int:
        """How many 20 ms of the track came louder than `above` (RMS, full scale 1)."""
        return sum(1 for level in self.levels.get(track_sid, []) if level > above)

    async def close(self) -> None:
        await super().close()
        await self.stop()

    async def stop(self) -> None:
        """The peer connections closed (after `close()` or `drop()`)."""
        for task in [self.worker, *self.tasks]:
            if task is not None:
                task.cancel()
        for pc in (self.publisher, self.subscriber):
            if pc is not None:
                await pc.close()
