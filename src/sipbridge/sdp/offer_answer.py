"""RFC 3264 offer/answer for one audio stream: negotiate, answer, offer.

`negotiate_audio` picks the stream, codec, DTMF format and addresses from an offer (or from the
answer to our offer), raising `SdpError(NOT_ACCEPTABLE)` when nothing fits; `build_answer` and
`make_offer` write descriptions. Nothing here reads a clock or draws random numbers: session ids
and versions for `o=` come from the caller.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence

from sipbridge.sdp._abnf import malformed
from sipbridge.sdp.description import (
    STATIC_PAYLOAD_TYPES,
    TELEPHONE_EVENT,
    Attribute,
    Codec,
    Connection,
    CryptoAttribute,
    Direction,
    MediaDescription,
    Origin,
    PayloadFormat,
    SessionDescription,
    Timing,
    format_crypto,
    format_fmtp,
    format_rtpmap,
)
from sipbridge.sdp.errors import SdpError, SdpErrorKind

__all__ = ["AudioAnswer", "build_answer", "make_offer", "negotiate_audio"]


def _not_acceptable(detail: str) -> SdpError:
    return SdpError(SdpErrorKind.NOT_ACCEPTABLE, detail)


# Dataclasses made for every call write their own `__init__` (`init=False`): mypyc compiles
# it, where the one the dataclasses module generates stays interpreted (issue 18).
@dataclasses.dataclass(init=False, frozen=True, slots=True, kw_only=True)
class AudioAnswer:
    """The outcome of negotiating the audio stream of an offer (RFC 3264 s6.1).

    `direction` is ours, as the answer states it. `remote_*` say where to send RTP and RTCP;
    when `on_hold` is true the offerer asked us not to send at all. `offered_crypto` are the
    offer's SDES lines for the media layer to choose from when `proto` is RTP/SAVP.
    """

    media_index: int
    proto: str
    audio: PayloadFormat
    telephone_event: PayloadFormat | None
    ptime: int | None
    direction: Direction
    on_hold: bool
    remote_address: str
    remote_port: int
    remote_rtcp_address: str
    remote_rtcp_port: int
    rtcp_mux: bool
    offered_crypto: tuple[CryptoAttribute, ...] = ()

    def __init__(
        self,
        *,
        media_index: int,
        proto: str,
        audio: PayloadFormat,
        telephone_event: PayloadFormat | None,
        ptime: int | None,
        direction: Direction,
        on_hold: bool,
        remote_address: str,
        remote_port: int,
        remote_rtcp_address: str,
        remote_rtcp_port: int,
        rtcp_mux: bool,
        offered_crypto: tuple[CryptoAttribute, ...] = (),
    ) -> None:
        object.__setattr__(self, "media_index", media_index)
        object.__setattr__(self, "proto", proto)
        object.__setattr__(self, "audio", audio)
        object.__setattr__(self, "telephone_event", telephone_event)
        object.__setattr__(self, "ptime", ptime)
        object.__setattr__(self, "direction", direction)
        object.__setattr__(self, "on_hold", on_hold)
        object.__setattr__(self, "remote_address", remote_address)
        object.__setattr__(self, "remote_port", remote_port)
        object.__setattr__(self, "remote_rtcp_address", remote_rtcp_address)
        object.__setattr__(self, "remote_rtcp_port", remote_rtcp_port)
        object.__setattr__(self, "rtcp_mux", rtcp_mux)
        object.__setattr__(self, "offered_crypto", offered_crypto)


def negotiate_audio(
    offer: SessionDescription,
    supported: Sequence[Codec],
    *,
    prefer_offer_order: bool = True,
    protos: Collection[str] = ("RTP/AVP",),
    direction: Direction = Direction.SENDRECV,
    rtcp_mux: bool = False,
) -> AudioAnswer:
    """Accept the first offered audio stream we can serve; `SdpError(NOT_ACCEPTABLE)` if none.

    `supported` lists our codecs, most preferred first, plus telephone-event if we take RFC
    4733 DTMF. The codec is the first offered one we support (the offerer's preference, RFC 3264
    s6.1), or with `prefer_offer_order=False` the first of ours that is offered. The offer's
    payload type numbers are kept. `protos` are the transports we can answer; `direction` is
    what we are willing to do; `rtcp_mux` says whether we accept RFC 5761 multiplexing.
    Other m-lines are for `build_answer` to reject with port 0.
    """
    accepted = {proto.upper() for proto in protos}
    primaries = [codec for codec in supported if not codec.is_telephone_event]
    events = [codec for codec in supported if codec.is_telephone_event]
    reasons: list[str] = []
    for index, md in enumerate(offer.media):
        if md.media != "audio" or md.is_rejected:
            continue
        if md.proto.upper() not in accepted:
            reasons.append(f"m-line {index}: transport {md.proto} not supported")
            continue
        offered = md.payload_formats
        chosen = _choose_codec(offered, primaries, prefer_offer_order=prefer_offer_order)
        if chosen is None:
            names = ", ".join(str(p.codec) for p in offered) or "none we can name"
            reasons.append(f"m-line {index}: no common codec (offered {names})")
            continue
        connection = offer.connection_for(md)
        if connection is None:
            raise malformed(f"m-line {index}: no c= line (RFC 4566 s5.7)")
        offered_direction = offer.direction_for(md)
        if offer.is_on_hold(md):
            # RFC 3264 s8.4: a null address means send neither RTP nor RTCP there.
            offered_direction = offered_direction.intersect(Direction.SENDONLY)
        mux = rtcp_mux and md.rtcp_mux
        rtcp = md.rtcp
        if mux:
            rtcp_address, rtcp_port = connection.host, md.port
        elif rtcp is not None:
            rtcp_host = rtcp.connection.host if rtcp.connection else connection.host
            rtcp_address, rtcp_port = rtcp_host, rtcp.port
        else:
            # RFC 3550 s11: RTCP goes to the next higher port
            rtcp_address, rtcp_port = connection.host, md.port + 1
        return AudioAnswer(
            media_index=index,
            proto=md.proto,
            audio=chosen,
            telephone_event=_choose_event(offered, events, chosen.codec.clock_rate),
            ptime=md.ptime,
            direction=offered_direction.mirrored().intersect(direction),
            on_hold=not offered_direction.receives,
            remote_address=connection.host,
            remote_port=md.port,
            remote_rtcp_address=rtcp_address,
            remote_rtcp_port=rtcp_port,
            rtcp_mux=mux,
            offered_crypto=md.crypto,
        )
    raise _not_acceptable("; ".join(reasons) or "no audio stream offered")


def _choose_codec(
    offered: Sequence[PayloadFormat], ours: Sequence[Codec], *, prefer_offer_order: bool
) -> PayloadFormat | None:
    if prefer_offer_order:
        return next((p for p in offered if any(p.codec.matches(c) for c in ours)), None)
    for codec in ours:
        for payload in offered:
            if payload.codec.matches(codec):
                return payload
    return None


def _choose_event(
    offered: Sequence[PayloadFormat], ours: Sequence[Codec], clock_rate: int
) -> PayloadFormat | None:
    events = [p for p in offered if any(p.codec.matches(c) for c in ours)]
    # RFC 4733 s2.1: events use the clock of the audio they accompany, when offered.
    same_clock = [p for p in events if p.codec.clock_rate == clock_rate]
    candidates = same_clock or events
    return candidates[0] if candidates else None


def _addr_type(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def _check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")


def _payload_attributes(payload: PayloadFormat) -> list[Attribute]:
    found = [Attribute(name="rtpmap", value=format_rtpmap(payload.payload_type, payload.codec))]
    if payload.fmtp is not None:
        found.append(
            Attribute(name="fmtp", value=format_fmtp(str(payload.payload_type), payload.fmtp))
        )
    return found


def _session(
    *,
    address: str,
    session_id: int,
    session_version: int,
    username: str,
    session_name: str,
    timing: tuple[Timing, ...],
    media: tuple[MediaDescription, ...],
) -> SessionDescription:
    addr_type = _addr_type(address)
    return SessionDescription(
        origin=Origin(
            username=username,
            session_id=session_id,
            session_version=session_version,
            addr_type=addr_type,
            address=address,
        ),
        session_name=session_name,
        connection=Connection(addr_type=addr_type, address=address),
        timing=timing,
        media=media,
    )


def build_answer(
    offer: SessionDescription,
    audio: AudioAnswer,
    *,
    address: str,
    port: int,
    session_id: int,
    session_version: int,
    username: str = "-",
    session_name: str = "-",
    crypto: CryptoAttribute | None = None,
) -> SessionDescription:
    """The answer to `offer` accepting `audio` at our `address`:`port` (RFC 3264 s6).

    It has one m-line per offered m-line, in the same order; all but the accepted audio
    stream are rejected with port 0. The t= lines equal the offer's (s6). `crypto` is our SDES
    line, required when the accepted transport is RTP/SAVP(F) (RFC 4568 s7.1.2).
    """
    _check_port(port)
    if not 0 <= audio.media_index < len(offer.media):
        raise ValueError(f"media index {audio.media_index} is not in the offer")
    if crypto is None and audio.proto.upper() in ("RTP/SAVP", "RTP/SAVPF"):
        raise ValueError(f"an answer on {audio.proto} needs a crypto attribute (RFC 4568)")
    media: list[MediaDescription] = []
    for index, md in enumerate(offer.media):
        if index != audio.media_index:
            # RFC 3264 s6: a rejected stream keeps its m-line with port 0.
            media.append(
                MediaDescription(media=md.media, port=0, proto=md.proto, formats=md.formats)
            )
            continue
        payloads = (
            [audio.audio] if audio.telephone_event is None else [audio.audio, audio.telephone_event]
        )
        attributes = [a for payload in payloads for a in _payload_attributes(payload)]
        if audio.ptime is not None:
            attributes.append(Attribute(name="ptime", value=str(audio.ptime)))
        if crypto is not None:
            attributes.append(Attribute(name="crypto", value=format_crypto(crypto)))
        if audio.rtcp_mux:
            attributes.append(Attribute(name="rtcp-mux"))
        attributes.append(Attribute(name=audio.direction.value))
        media.append(
            MediaDescription(
                media="audio",
                port=port,
                proto=md.proto,
                formats=tuple(str(p.payload_type) for p in payloads),
                attributes=tuple(attributes),
            )
        )
    return _session(
        address=address,
        session_id=session_id,
        session_version=session_version,
        username=username,
        session_name=session_name,
        timing=offer.timing,
        media=tuple(media),
    )


def make_offer(
    codecs: Sequence[Codec],
    *,
    address: str,
    port: int,
    session_id: int,
    session_version: int,
    username: str = "-",
    session_name: str = "-",
    ptime: int | None = 20,
    direction: Direction = Direction.SENDRECV,
    proto: str = "RTP/AVP",
    fmtp: Mapping[Codec, str] | None = None,
    crypto: Sequence[CryptoAttribute] = (),
    rtcp_mux: bool = False,
) -> SessionDescription:
    """An offer of one audio stream with `codecs`, most preferred first (RFC 3264 s5).

    Static codecs take their RFC 3551 payload types; others take dynamic ones from 96 (101 for
    telephone-event/8000, the number most equipment expects). `fmtp` maps a codec to its
    parameters; by default telephone-event offers events 0-16 (RFC 4733 s7.1.1).
    """
    _check_port(port)
    if not codecs:
        raise ValueError("an offer needs at least one codec")
    params = {TELEPHONE_EVENT: "0-16"} if fmtp is None else fmtp
    payloads: list[PayloadFormat] = []
    used: set[int] = set()
    for codec in codecs:
        if any(p.codec.matches(codec) for p in payloads):
            raise ValueError(f"codec {codec} is listed twice")
        payload_type = next(
            (pt for pt, static in STATIC_PAYLOAD_TYPES.items() if static.matches(codec)), None
        )
        if payload_type is None and codec.matches(TELEPHONE_EVENT) and 101 not in used:
            payload_type = 101
        if payload_type is None:
            payload_type = next((pt for pt in range(96, 128) if pt not in used), None)
            if payload_type is None:
                raise ValueError("more codecs than dynamic payload types")
        used.add(payload_type)
        codec_fmtp = next((value for c, value in params.items() if c.matches(codec)), None)
        payloads.append(PayloadFormat(payload_type=payload_type, codec=codec, fmtp=codec_fmtp))
    attributes = [a for payload in payloads for a in _payload_attributes(payload)]
    if ptime is not None:
        attributes.append(Attribute(name="ptime", value=str(ptime)))
    attributes.extend(Attribute(name="crypto", value=format_crypto(c)) for c in crypto)
    if rtcp_mux:
        attributes.append(Attribute(name="rtcp-mux"))
    attributes.append(Attribute(name=direction.value))
    media = MediaDescription(
        media="audio",
        port=port,
        proto=proto,
        formats=tuple(str(p.payload_type) for p in payloads),
        attributes=tuple(attributes),
    )
    return _session(
        address=address,
        session_id=session_id,
        session_version=session_version,
        username=username,
        session_name=session_name,
        timing=(Timing(),),
        media=(media,),
    )
