"""The media side of the server: SDP negotiation into RTP legs, rooms of legs, media timeouts.

Call runners ask `negotiate` for an answer to an offer (488 when nothing fits the call's
`MediaPolicy`), `attach` the leg to its room's audio once answered, `renegotiate` on re-INVITE
or UPDATE, and `release` it at the end. A leg that hears nothing - no RTP, no RTCP - for the
media timeout (15 s; 30 s before its first packet; the trunk's `media_timeout` when set) is
reported through `on_timeout`, unless its peer said it sends nothing (`inactive`/`recvonly`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from mypy_extensions import mypyc_attr

from sipbridge import sdp
from sipbridge.media import codecs
from sipbridge.media.errors import MediaError
from sipbridge.media.leg import MEDIA_TIMEOUT_INITIAL_S, MEDIA_TIMEOUT_S
from sipbridge.media.srtp import SUITES, SrtpContext, SrtpKeys
from sipbridge.server.media import crelay
from sipbridge.server.media.leg_driver import FRAME_MS, AudioLeg, CallMedia, MediaClock, RoomAudio
from sipbridge.server.media.ports import PortPool, SendBatch
from sipbridge.server.media.track_legs import TrackLegs
from sipbridge.sip.errors import SipProtocolError
from sipbridge.telephony.media import MediaPolicy, spec_for
from sipbridge.telephony.sdes import (
    accept_answer,
    answer_crypto,
    choose_crypto,
    keys_from_crypto,
    offer_crypto,
)

log = logging.getLogger(__name__)

__all__ = ["MEDIA_TIMEOUT_INITIAL_S", "MEDIA_TIMEOUT_S", "MediaService", "Negotiated"]


@dataclass(eq=False, kw_only=True)
class Negotiated:
    answer: sdp.SessionDescription | None  # None when asked for no port (`_choose`)
    audio: sdp.AudioAnswer
    spec: codecs.CodecSpec
    keys: SrtpKeys | None = None
    remote_keys: SrtpKeys | None = None
    crypto: sdp.CryptoAttribute | None = None  # our SDES line in the answer


def _not_acceptable(detail: str) -> SipProtocolError:
    return SipProtocolError(488, "Not Acceptable Here", detail)


# This is the SIP boundary of `sdp/`: an `sdp.SdpError` (malformed SDP, or nothing in it we can
# take) becomes 488 Not Acceptable Here with the error's detail, as `_negotiate`'s own refusals
# (no usable SRTP key) are. What `_negotiate` may raise:
_REFUSED = (sdp.SdpError, SipProtocolError)


@mypyc_attr(allow_interpreted_subclasses=True)  # tests replace its relay engine
class MediaService:
    def __init__(self, address: str, ports: tuple[int, int], *, bind: str = "") -> None:
        self.address = address  # what SDP advertises
        self.pool = PortPool(bind or address, ports[0], ports[1])
        self.clock = MediaClock()
        # The clock's sends of a tick made on the compiled sender's thread (`ports.SendBatch`).
        self.clock.batch = self.pool.batch = SendBatch(crelay.new_sender())
        self.clock.on_second = self._check_timeouts
        self.rooms: dict[str, RoomAudio] = {}
        # legs armed: their media timeout and its handler
        self.legs: dict[CallMedia, tuple[float, Callable[[], None]]] = {}
        self.stats: dict[str, int] = {}
        self.ended: dict[str, int] = {}  # RTP counters of the legs released so far
        self.on_release: Callable[[CallMedia], None] | None = None  # each leg, as it ends
        self.track_legs = TrackLegs()  # a room track's sid -> the leg giving it audio
        # The compiled relay engine (`crelay.py`), started with the first leg; None without it.
        self.crelay: crelay.RelayEngine | None = None

    def _engine(self, loop: asyncio.AbstractEventLoop) -> crelay.RelayEngine | None:
        if self.crelay is None and crelay.available():
            self.crelay = crelay.RelayEngine(loop)
        return self.crelay

    # -- offer/answer ---------------------------------------------------------------------

    def _negotiate(
        self,
        offer: sdp.SessionDescription,
        policy: MediaPolicy,
        *,
        port: int,
        session_id: int,
        keys: SrtpKeys | None = None,
    ) -> Negotiated:
        """The choice (`_choose`) and our answer with it, on `port`."""
        chosen = self._choose(offer, policy, keys=keys)
        chosen.answer = sdp.build_answer(
            offer,
            chosen.audio,
            address=self.address,
            port=port,
            session_id=session_id,
            session_version=session_id,
            crypto=chosen.crypto,
        )
        return chosen

    def _choose(
        self, offer: sdp.SessionDescription, policy: MediaPolicy, *, keys: SrtpKeys | None = None
    ) -> Negotiated:
        """What to answer `offer` with under `policy` (codec, SRTP keys and SDES line), without
        the answer itself: nothing in the choice depends on the port, which a new call binds
        once the choice says whether RTCP needs a port of its own."""
        supported = [*policy.codecs, sdp.TELEPHONE_EVENT]
        audio = sdp.negotiate_audio(
            offer,
            supported,
            prefer_offer_order=not policy.prefer_ours,
            protos=policy.protos,
            rtcp_mux=True,
        )
        if audio.ptime is not None and audio.ptime != FRAME_MS:
            # What we want to receive: 20 ms, the clock's frame (RFC 4566 s6: a=ptime in an
            # answer is the answerer's wish). Forwarded packets keep the sender's length.
            audio = dataclasses.replace(audio, ptime=FRAME_MS)
        spec = spec_for(audio.audio.codec)
        if spec is None:  # pragma: no cover - every policy codec has a spec
            raise _not_acceptable(f"codec {audio.audio.codec} has no implementation")
        crypto = None
        remote_keys = None
        if audio.proto.upper() in ("RTP/SAVP", "RTP/SAVPF"):
            chosen = choose_crypto(audio.offered_crypto)
            if chosen is None:
                raise _not_acceptable("no usable a=crypto (RFC 4568) in the offer")
            try:
                remote_keys = keys_from_crypto(chosen)
            except MediaError as err:
                raise _not_acceptable(str(err)) from None
            if keys is None or keys.suite != remote_keys.suite:
                keys = SrtpKeys.generate(remote_keys.suite, os.urandom)
            crypto = answer_crypto(chosen, keys)
        else:
            keys = None
        return Negotiated(
            answer=None,
            audio=audio,
            spec=spec,
            keys=keys,
            remote_keys=remote_keys,
            crypto=crypto,
        )

    def negotiate(
        self,
        body: bytes,
        policy: MediaPolicy,
        *,
        on_dtmf: Callable[[str], None] | None = None,
        on_first_packet: Callable[[], None] | None = None,
    ) -> tuple[bytes, CallMedia]:
        """Answer an INVITE's offer with a new RTP leg (not yet receiving): (SDP, leg)."""
        try:
            offer = sdp.parse_sdp(body)
        except sdp.SdpError as err:
            raise _not_acceptable(err.detail) from None
        session_id = secrets.randbelow(2**31)
        # Choose first (the codec, and rtcp-mux: one port or two), then bind, then answer once
        # (the answer built twice, with a placeholder port first, cost 11 us a call, issue 18).
        try:
            trial = self._choose(offer, policy)
        except _REFUSED as refused:  # (its own name: a compiled `err` has one type)
            self._count("offer_refused")
            raise _not_acceptable(refused.detail) from None
        srtp = None
        if trial.keys is not None and trial.remote_keys is not None:
            srtp = SrtpContext(local=trial.keys, remote=trial.remote_keys)
        try:
            leg = CallMedia(
                pool=self.pool,
                answer=trial.audio,
                spec=trial.spec,
                srtp=srtp,
                on_dtmf=on_dtmf,
                on_first_packet=on_first_packet,
            )
        except OSError:
            self._count("no_port")
            raise SipProtocolError(503, "Service Unavailable", "no free RTP port") from None
        leg.session_id = leg.session_version = session_id
        leg.keys, leg.remote_keys = trial.keys, trial.remote_keys
        try:
            answer = sdp.build_answer(
                offer,
                trial.audio,
                address=self.address,
                port=leg.port,
                session_id=session_id,
                session_version=session_id,
                crypto=trial.crypto,
            )
        except BaseException:  # (a choice it cannot answer is our bug: not a leaked port)
            self.release(leg)
            raise
        return sdp.serialize_sdp(answer), leg

    def offer(
        self,
        policy: MediaPolicy,
        *,
        on_dtmf: Callable[[str], None] | None = None,
        on_first_packet: Callable[[], None] | None = None,
    ) -> tuple[bytes, CallMedia]:
        """Our offer for an INVITE that came without one (the answer comes in the ACK, RFC 3261
        s13.2.1): every codec of the policy, and SDES keys when the policy requires SRTP."""
        session_id = secrets.randbelow(2**31)
        secure = policy.protos[0] != "RTP/AVP"
        codecs_offered = [*policy.codecs, sdp.TELEPHONE_EVENT]
        trial = sdp.make_offer(
            codecs_offered, address=self.address, port=9, session_id=0, session_version=0
        )
        media = trial.media[0]
        first, event = media.payload_formats[0], media.payload_formats[-1]
        spec = spec_for(first.codec)
        assert spec is not None
        placeholder = sdp.AudioAnswer(
            media_index=0,
            proto=media.proto,
            audio=first,
            telephone_event=event,
            ptime=FRAME_MS,
            direction=sdp.Direction.SENDRECV,
            on_hold=False,
            remote_address="",
            remote_port=0,  # nowhere to send until the answer
            remote_rtcp_address="",
            remote_rtcp_port=0,
            rtcp_mux=False,
        )
        try:
            leg = CallMedia(
                pool=self.pool,
                answer=placeholder,
                spec=spec,
                on_dtmf=on_dtmf,
                on_first_packet=on_first_packet,
            )
        except OSError:
            self._count("no_port")
            raise SipProtocolError(503, "Service Unavailable", "no free RTP port") from None
        keys = [SrtpKeys.generate(suite, os.urandom) for suite in SUITES] if secure else []
        leg.offered_keys = keys
        leg.session_id = leg.session_version = session_id
        offer = sdp.make_offer(
            codecs_offered,
            address=self.address,
            port=leg.port,
            session_id=session_id,
            session_version=session_id,
            proto="RTP/SAVP" if secure else "RTP/AVP",
            crypto=offer_crypto(keys),
        )
        leg.offered_codecs = tuple(codecs_offered)
        self._count("late_offer")
        return sdp.serialize_sdp(offer), leg

    def accept_answer(self, leg: CallMedia, body: bytes) -> None:
        """The answer to our offer (in the ACK): where to send, which codec, which keys.
        SipProtocolError 488 when it cannot be used (the caller then hangs up), whether the SDP
        is malformed or offers nothing we can take (`sdp.SdpError`)."""
        try:
            answer = sdp.parse_sdp(body)
            secure = bool(leg.offered_keys) or leg.keys is not None
            audio = sdp.negotiate_audio(
                answer,
                leg.offered_codecs,
                protos=("RTP/SAVP",) if secure else ("RTP/AVP",),
                rtcp_mux=True,
            )
        except sdp.SdpError as err:
            raise _not_acceptable(err.detail) from None
        spec = spec_for(audio.audio.codec)
        if spec is None:
            raise _not_acceptable(f"answer chose {audio.audio.codec}, which we did not offer")
        if leg.offered_keys:
            if not audio.offered_crypto:
                raise _not_acceptable("the answer has no a=crypto")
            try:
                local, remote = accept_answer(leg.offered_keys, audio.offered_crypto[0])
            except MediaError as refused:
                raise _not_acceptable(str(refused)) from None
            leg.keys, leg.remote_keys = local, remote
            leg.srtp = SrtpContext(local=local, remote=remote)
            leg.offered_keys = []
        elif leg.keys is not None:
            # Our re-offer repeated our keys; the answer may bring new ones of its own.
            if not audio.offered_crypto:
                raise _not_acceptable("the answer has no a=crypto")
            try:
                remote = keys_from_crypto(audio.offered_crypto[0])
            except MediaError as refused:
                raise _not_acceptable(str(refused)) from None
            if remote != leg.remote_keys:
                leg.remote_keys = remote
                leg.srtp = SrtpContext(local=leg.keys, remote=remote)
        if spec is not leg.spec:
            leg.change_codec(spec)
        leg.update(audio)

    def renegotiate(self, leg: CallMedia, body: bytes, policy: MediaPolicy) -> bytes:
        """A re-INVITE's or UPDATE's offer for an existing leg: same port, new peer/direction.

        An offer without SDP gets our current description as the offer (RFC 3261 s14.1)."""
        try:
            offer = sdp.parse_sdp(body)
            result = self._negotiate(
                offer, policy, port=leg.port, session_id=leg.session_id, keys=leg.keys
            )
        except _REFUSED as err:
            raise _not_acceptable(err.detail) from None
        leg.session_version += 1  # RFC 3264 s8: one more per answer that changes, none per refusal
        if result.spec is not leg.spec:
            # A codec change mid-call: keep the leg, swap its codec state.
            leg.change_codec(result.spec)
        if result.keys is not None and result.remote_keys is not None:
            if leg.keys is None or leg.srtp is None or result.remote_keys != leg.remote_keys:
                leg.srtp = SrtpContext(local=result.keys, remote=result.remote_keys)
            leg.keys = result.keys
            leg.remote_keys = result.remote_keys
        elif leg.srtp is not None:
            leg.srtp = None
            leg.keys = None
        answer = result.answer
        assert answer is not None  # (`_negotiate` builds it)
        origin = answer.origin
        answer = _with_version(answer, origin, leg.session_version)
        leg.update(result.audio)
        return sdp.serialize_sdp(answer)

    # -- rooms ----------------------------------------------------------------------------

    def start(
        self,
        leg: CallMedia,
        *,
        timeout: float,
        on_timeout: Callable[[], None],
    ) -> None:
        """Start receiving (the call is answered); `on_timeout` once it goes silent. A leg
        already receiving early media counts its silence from now."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if leg.started_at is None:
            leg.start(loop, now, self._engine(loop))
        leg.arm_timeout(timeout, now)
        self.legs[leg] = (leg.timeout or MEDIA_TIMEOUT_S, on_timeout)
        leg.on_timeout = lambda: self._timed_out(leg)
        self.clock.start()

    def start_early(self, leg: CallMedia) -> None:
        """Receive early media (a 183's session, before the answer): no media timeout yet - a
        carrier's announcement may end long before the phone is picked up."""
        if leg.started_at is None:
            loop = asyncio.get_running_loop()
            leg.start(loop, loop.time(), self._engine(loop))
            self.clock.start()

    def attach(self, leg: AudioLeg, room_name: str) -> None:
        room = self.rooms.get(room_name)
        if room is None:
            room = self.rooms[room_name] = RoomAudio(room_name, self.clock)
        room.add(leg)

    def detach(self, leg: AudioLeg) -> None:
        room = leg.room
        if room is not None:
            room.remove(leg)
            if not room.legs:
                self.clock.discard(room)
                self.rooms.pop(room.name, None)

    def release(self, leg: CallMedia) -> None:
        first = not leg.closed
        self.detach(leg)
        for sid in self.track_legs.sids_of(leg):
            del self.track_legs[sid]
        self.legs.pop(leg, None)
        leg.close()
        if not first:
            # Released again (a call's end and its media's end both release it): its counters
            # are in `ended` once already; counted twice, the rtp_* totals doubled (issue 18).
            self._count("released_again")
            return
        if self.on_release is not None:
            self.on_release(leg)
        for name, value in _counters(leg).items():
            self.ended[name] = self.ended.get(name, 0) + value

    def _check_timeouts(self, now: float) -> None:
        """Once a second: the deadlines of the armed legs (RTCP reports, media timeouts)."""
        wallclock = time.time()
        for leg in list(self.legs):
            deadline = leg.get_timer()
            if deadline is not None and deadline <= now:
                leg.handle_timer(now, wallclock)

    def _timed_out(self, leg: CallMedia) -> None:
        armed = self.legs.pop(leg, None)
        self._count("media_timeout")
        if armed is None:  # pragma: no cover - only armed legs have this handler
            return
        try:
            armed[1]()
        except Exception:
            log.exception("media timeout handler failed")

    def close(self) -> None:
        for leg in list(self.legs):
            self.release(leg)
        self.clock.stop()
        self.clock.batch.close()
        if self.crelay is not None:
            self.crelay.close()

    def _count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1

    def samples(self) -> dict[str, int]:
        """Counters for /metrics."""
        out = dict(self.stats)
        totals = dict(self.ended)
        for leg in self.legs:
            for name, value in _counters(leg).items():
                totals[name] = totals.get(name, 0) + value
        out.update({f"rtp_{name}": value for name, value in totals.items()})
        out["legs"] = len(self.legs)
        out["rooms"] = len(self.rooms)
        out["clock_ticks"] = self.clock.ticks
        out["clock_skipped"] = self.clock.skipped
        out["clock_caught_up"] = self.clock.caught_up  # run late, back to back (a stall)
        out["clock_idle"] = self.clock.idle  # passed without waking: no room mixed
        out["clock_send_batches"] = self.clock.batch.batches  # ticks sent by the sender thread
        out["clock_batched_sends"] = self.clock.batch.sent
        out["ports_exhausted"] = self.pool.exhausted
        if self.crelay is not None:  # the compiled relay's own work (`crelay.py`)
            out.update({f"crelay_{name}": n for name, n in self.crelay.counters().items()})
        return out


def _counters(leg: CallMedia) -> dict[str, int]:
    leg.sync()
    stats = leg.stats
    found = {
        name: getattr(stats, name)
        for name in (
            "packets_in",
            "packets_out",
            "malformed",
            "wrong_source",
            "unknown_payload",
            "srtp_failed",
            "rtcp_in",
            "rtcp_out",
            "rtcp_malformed",
            "dtmf_in",
            "forwarded",
            "mixed_frames",
        )
    }
    found["truncated"] = leg.rtp.truncated + (leg.rtcp.truncated if leg.rtcp else 0)
    found["send_errors"] = (
        leg.rtp.send_errors + (leg.rtcp.send_errors if leg.rtcp else 0) + leg.relay_send_errors
    )
    return found


def _with_version(
    answer: sdp.SessionDescription, origin: sdp.Origin, version: int
) -> sdp.SessionDescription:
    return dataclasses.replace(answer, origin=dataclasses.replace(origin, session_version=version))
