"""The peer connections of one client, with aiortc (WIRE.md s4, s6).

Single-PC mode (`/rtc/v1`): one peer connection, the client always offers. Its offer's recvonly
audio sections carry what it subscribes to: each room audio track it hears is put on a free one
(`mid_to_track_id` in our answer), fed by a `Subscription` (rtc/audio.py), which aiortc encodes
(Opus) or only packetises (G.711, when that is what the client takes). Tracks it publishes
arrive decoded from aiortc and become `Publication`s. A track that needs a section while none is
free asks the client for one (`MediaSectionsRequirement`), and the client re-offers. Data
packets travel on the `_reliable` and `_lossy` data channels the client opens.

Two-PC mode (`/rtc`, LiveKit's protocol before v1): the client's publisher connection is
answered as above but carries nothing of ours; the subscriber connection is ours to offer
(`RtcPeer(offers=True)`): a sendonly section per track the client hears, added and made
inactive as tracks come and go, and the `_reliable`/`_lossy` channels the server sends on.

ICE: no STUN server is used; host candidates are gathered on the `--rtc-ip` addresses only and
bound within `--rtc-ports` (rtc/aiortc_patches.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import av
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp

from sipbridge.media import codecs
from sipbridge.server.media.leg_driver import G711, AudioLeg
from sipbridge.server.rtc.aiortc_patches import start_missed_media
from sipbridge.server.rtc.audio import OutgoingAudio, Publication, Subscription

MAX_LOSSY_BUFFERED = 256 * 1024


def _fingerprint(sdp: str) -> str:
    """The DTLS fingerprint of a session description: which peer connection made it."""
    for line in sdp.splitlines():
        if line.startswith("a=fingerprint:"):
            return line[len("a=fingerprint:") :].strip().lower()
    return ""


def split_candidates(sdp: str) -> tuple[str, list[str]]:
    """A description without its `a=candidate` lines, and those candidates as the JSON
    `candidateInit` of LiveKit's TrickleRequest ({candidate, sdpMid, sdpMLineIndex}), once
    each: the two-PC protocol trickles them, as LiveKit does, on the connection's target."""
    kept, found, seen = [], [], set()
    mid, index = "", -1
    for line in sdp.splitlines():
        if line.startswith("m="):
            index += 1
            mid = ""
        elif line.startswith("a=mid:"):
            mid = line[6:].strip()
        if line.startswith("a=candidate:"):
            candidate = line[2:]
            if candidate not in seen:  # bundled: every section lists the same ones
                seen.add(candidate)
                init = {"candidate": candidate, "sdpMid": mid, "sdpMLineIndex": index}
                found.append(json.dumps(init))
            continue
        if line.startswith("a=end-of-candidates"):
            continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n", found


def _msid_tracks(sdp: str) -> dict[str, str]:
    """mid -> track id of each section with `a=msid:<stream> <track>` (RFC 8830)."""
    found: dict[str, str] = {}
    mid = ""
    for line in sdp.splitlines():
        if line.startswith("m="):
            mid = ""
        elif line.startswith("a=mid:"):
            mid = line[6:].strip()
        elif line.startswith("a=msid:") and mid:
            parts = line[7:].split()
            if len(parts) == 2:
                found[mid] = parts[1]
    return found


_MIME = {codecs.PCMU_SPEC: "audio/pcmu", codecs.PCMA_SPEC: "audio/pcma"}


class ForeignConnection(ValueError):
    """A session description from another peer connection than the one negotiated."""


def _subscription_codec(source: AudioLeg, transceiver: RTCRtpTransceiver) -> codecs.CodecSpec:
    """What a client hears a track in: a phone's G.711 as it is when the client's section takes
    it (the SDK offers PCMU and PCMA), or the other G.711 (translated by table); else Opus."""
    offered = {codec.mimeType.lower() for codec in transceiver._codecs}
    if source.forwardable and source.spec in G711:
        for spec in sorted(G711, key=lambda spec: spec is not source.spec):
            if _MIME[spec] in offered:
                return spec
    return codecs.OPUS_SPEC


def _keep_codec(transceiver: RTCRtpTransceiver, spec: codecs.CodecSpec) -> None:
    """Answer (and re-answer, on every later offer) the section with `spec` only: aiortc's
    sender keeps the encoder of its first codec, so the codec of a section must not change."""
    mime = _MIME.get(spec, "audio/opus")
    kept = [codec for codec in transceiver._codecs if codec.mimeType.lower() == mime]
    if kept:
        transceiver._codecs = kept


def _free_audio(transceiver: RTCRtpTransceiver) -> bool:
    """A section the client offered to receive audio on, with nothing of ours on it yet. (aiortc
    makes every section of a remote offer `recvonly` on our side; what the client offered is in
    `_offerDirection`, reversed: `sendonly` there is a section the client receives on, while
    its own microphone's section is `recvonly` and must not carry a room track.)"""
    track: MediaStreamTrack | None = transceiver.sender.track
    client_receives = transceiver._offerDirection in ("sendonly", "sendrecv")
    return (
        transceiver.kind == "audio"
        and transceiver.direction == "recvonly"
        and client_receives
        and track is None
    )


def _codec_capability(spec: codecs.CodecSpec) -> list[object]:
    """The one codec a subscriber section of ours offers for a track heard in `spec`."""
    mime = _MIME.get(spec, "audio/opus")
    capabilities = RTCRtpSender.getCapabilities("audio").codecs
    return [codec for codec in capabilities if codec.mimeType.lower() == mime]


def _new_pc() -> RTCPeerConnection:
    """Every section and the data channel on one transport (one socket), as LiveKit's clients
    bundle them (max-bundle). With aiortc's default (balanced), a client whose first offer has
    only its data channel (Firefox, a deferred offer) and whose next one adds two audio sections
    got the second on the transport the answer's BUNDLE stopped: silent. No STUN server: with
    None, aiortc falls back to a public one."""
    config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    return RTCPeerConnection(config)


@dataclass(eq=False, kw_only=True)
class RtcPeer:
    """One peer connection of a signalling session: the one the client offers (single-PC, or
    the publisher in two-PC mode) or, with `offers`, the subscriber connection we offer."""

    identity: str
    offers: bool = False
    pc: RTCPeerConnection = field(init=False)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # track sid -> the transceiver carrying it to this client, and its room listener
    sending: dict[str, tuple[RTCRtpTransceiver, Subscription]] = field(default_factory=dict)
    # client track id (AddTrackRequest.cid) -> our TR_ sid, until its media arrives
    published: dict[str, str] = field(default_factory=dict)
    publications: dict[str, Publication] = field(default_factory=dict)
    readers: set[asyncio.Task[None]] = field(default_factory=set)
    closed: bool = False
    listening: bool = False
    mid_tracks: dict[str, str] = field(default_factory=dict)  # mid -> the client's track id
    channels: dict[str, RTCDataChannel] = field(default_factory=dict)  # by label
    on_data: Callable[[bytes, bool], None] | None = None  # (DataPacket bytes, lossy)
    on_connected: Callable[[], None] | None = None  # ICE and DTLS are up
    remote_fingerprint: str = ""  # of the connection the client negotiated
    offers_seen: int = 0  # client offers received (the newest one wins a queue)
    # ours to offer (`offers`): the offer awaiting the client's answer, and whether the
    # subscriptions changed since it was made (offer again once it is answered)
    pending_offer: tuple[str, dict[str, str], list[str]] | None = None  # sdp, mids, candidates
    offer_id: int = 0
    offer_again: bool = False
    offering: bool = False
    up: bool = False  # connected once (ours to offer: re-offers wait for it)
    answer_deadline: asyncio.TimerHandle | None = None

    def __post_init__(self) -> None:
        self.pc = _new_pc()
        if self.offers:
            self.pc.on("connectionstatechange", self._on_state)
            self.listening = True

    async def answer(
        self,
        sdp: str,
        wanted: dict[str, tuple[AudioLeg, str]],
        on_publication: Callable[[str, Publication], None],
    ) -> tuple[str, dict[str, str], list[str]]:
        """Answer the client's offer: (answer SDP, mid -> TR_ sid, tracks left without a free
        section). `wanted`: the audio tracks this client should receive, with their sources and
        their publishers' participant sids.
        """
        if not self.listening:
            self.listening = True
            self.pc.on("track", lambda track: self._on_track(track, on_publication))
            self.pc.on("datachannel", self._on_channel)
            self.pc.on("connectionstatechange", self._on_state)
        if not sdp.startswith("v=0") or "\nm=" not in sdp or "a=ice-ufrag:" not in sdp:
            raise ValueError("the offer is no WebRTC session description")
        self.check_fingerprint(sdp)
        self.mid_tracks.update(_msid_tracks(sdp))
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        for transceiver, subscription in self.sending.values():
            _keep_codec(transceiver, subscription.spec)
        used = {id(transceiver) for transceiver, _ in self.sending.values()}
        free = [t for t in self.pc.getTransceivers() if _free_audio(t) and id(t) not in used]
        left = []
        for track_sid, (source, publisher_sid) in wanted.items():
            if track_sid in self.sending:
                continue
            if not free:
                left.append(track_sid)
                continue
            transceiver = free.pop(0)
            track = OutgoingAudio(track_sid)
            transceiver.sender.replaceTrack(track)
            transceiver.direction = "sendonly"
            # msid "<PA_sid>|<TR_sid> <TR_sid>" or the SDK drops the track (WIRE.md s4)
            transceiver.sender._stream_id = f"{publisher_sid}|{track_sid}"
            spec = _subscription_codec(source, transceiver)
            _keep_codec(transceiver, spec)
            self.sending[track_sid] = (transceiver, Subscription(source, track, spec))
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        mids = {
            transceiver.mid: track_sid
            for track_sid, (transceiver, _) in self.sending.items()
            if transceiver.mid is not None
        }
        return self.pc.localDescription.sdp, mids, left

    def check_fingerprint(self, sdp: str) -> None:
        """A description of another peer connection than the one negotiated (its DTLS
        fingerprint changed) cannot be followed: aiortc keeps one DTLS session per connection."""
        fingerprint = _fingerprint(sdp)
        if self.remote_fingerprint and fingerprint != self.remote_fingerprint:
            raise ForeignConnection("a description of a peer connection not negotiated")
        self.remote_fingerprint = fingerprint

    async def offer(self, wanted: dict[str, tuple[AudioLeg, str]]) -> tuple[str, dict[str, str]]:
        """Our offer on the subscriber connection (`offers`): a new sendonly section for each
        wanted track without one; (offer SDP, mid -> TR_ sid)."""
        for track_sid, (source, publisher_sid) in wanted.items():
            if track_sid in self.sending:
                continue
            track = OutgoingAudio(track_sid)
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
            # msid "<PA_sid>|<TR_sid> <TR_sid>": the SDK finds the publisher in the stream id
            transceiver.sender._stream_id = f"{publisher_sid}|{track_sid}"
            spec = source.spec if source.forwardable and source.spec in G711 else codecs.OPUS_SPEC
            transceiver.setCodecPreferences(_codec_capability(spec))  # type: ignore[arg-type]
            self.sending[track_sid] = (transceiver, Subscription(source, track, spec))
        if not self.channels:
            # LiveKit's subscriber channels, which the client reads what the server sends on.
            # Made after the first offer's sections: aiortc bundles a data channel made before
            # any section on a transport of its own, which the answer's BUNDLE would then stop.
            for label, ordered in (("_reliable", True), ("_lossy", False)):
                channel = self.pc.createDataChannel(
                    label, ordered=ordered, maxRetransmits=None if ordered else 0
                )
                self._on_channel(channel)
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        mids = {
            transceiver.mid: track_sid
            for track_sid, (transceiver, _) in self.sending.items()
            if transceiver.mid is not None
        }
        return self.pc.localDescription.sdp, mids

    async def accept_answer(self, sdp: str) -> None:
        """The client's answer to our offer."""
        if not sdp.startswith("v=0") or "a=ice-ufrag:" not in sdp:
            raise ValueError("the answer is no WebRTC session description")
        self.check_fingerprint(sdp)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    def drop(self, track_sid: str) -> Subscription | None:
        """A track the client no longer hears on the subscriber connection: its section goes
        inactive at the next offer, its sender ends with its track."""
        entry = self.sending.pop(track_sid, None)
        if entry is None:
            return None
        transceiver, subscription = entry
        transceiver.direction = "inactive"
        subscription.track.stop()
        return subscription

    def _on_state(self) -> None:
        if self.pc.connectionState != "connected":
            return
        # what a negotiation ending while DTLS was still connecting did not start, now
        task = asyncio.ensure_future(start_missed_media(self.pc))
        self.readers.add(task)
        task.add_done_callback(self.readers.discard)
        if self.on_connected is not None:
            callback, self.on_connected = self.on_connected, None
            callback()

    def _on_channel(self, channel: RTCDataChannel) -> None:
        """The client opens `_reliable`, `_lossy` (and `_data_track`) in band (WIRE.md s4)."""
        self.channels[channel.label] = channel
        lossy = channel.label == "_lossy"

        def message(data: bytes | str) -> None:
            if isinstance(data, bytes) and self.on_data is not None:
                self.on_data(data, lossy)

        channel.on("message", message)

    def send_data(self, data: bytes, *, lossy: bool) -> bool:
        """A DataPacket to the client on its channel of that kind; False when none is open."""
        channel = self.channels.get("_lossy" if lossy else "_reliable") or self.channels.get(
            "_reliable"
        )
        if channel is None or channel.readyState != "open":
            return False
        if lossy and channel.bufferedAmount > MAX_LOSSY_BUFFERED:
            return False  # lossy data is dropped rather than queued behind a slow client
        channel.send(data)
        return True

    def _on_track(
        self, track: MediaStreamTrack, on_publication: Callable[[str, Publication], None]
    ) -> None:
        if track.kind != "audio":
            return
        # aiortc names remote tracks itself: the client's track id (its AddTrackRequest cid)
        # is in the a=msid of the section the track came on.
        mid = next((t.mid for t in self.pc.getTransceivers() if t.receiver.track is track), None)
        track_sid = self.published.get(self.mid_tracks.get(mid or "", ""), "")
        publication = Publication()
        if track_sid:
            self.publications[track_sid] = publication
            on_publication(track_sid, publication)
        task = asyncio.create_task(self._read(track, publication), name=f"rtc in {track.id}")
        self.readers.add(task)
        task.add_done_callback(self.readers.discard)

    async def _read(self, track: MediaStreamTrack, publication: Publication) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                if isinstance(frame, av.AudioFrame):
                    publication.push(frame)

    async def add_candidate(self, candidate_init: str) -> None:
        """A trickled client candidate: JSON {candidate, sdpMid, sdpMLineIndex}."""
        try:
            init = json.loads(candidate_init)
            text = str(init.get("candidate", ""))
        except (ValueError, AttributeError):
            return
        if not text:
            return
        try:
            candidate = candidate_from_sdp(
                text.split(":", 1)[1] if text.startswith("candidate:") else text
            )
        except (ValueError, IndexError):
            return
        candidate.sdpMid = init.get("sdpMid")
        candidate.sdpMLineIndex = init.get("sdpMLineIndex")
        with contextlib.suppress(Exception):
            await self.pc.addIceCandidate(candidate)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.answer_deadline is not None:
            self.answer_deadline.cancel()
            self.answer_deadline = None
        for task in list(self.readers):
            task.cancel()
        for _, subscription in self.sending.values():
            subscription.track.stop()
        with contextlib.suppress(Exception):
            await self.pc.close()
