"""SDP parse/serialise (RFC 4566) and audio offer/answer (RFC 3264).

The sample bodies below are written in the style of what each product sends (field order,
attribute sets, payload type numbers); addresses are from the documentation ranges of RFC 5737
and RFC 3849 unless a product's own example uses another.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.sdp import (
    G722,
    MAX_FORMATS,
    MAX_MEDIA,
    MAX_SDP_BYTES,
    MAX_SDP_LINES,
    OPUS,
    PCMA,
    PCMU,
    STATIC_PAYLOAD_TYPES,
    TELEPHONE_EVENT,
    Attribute,
    AudioAnswer,
    Bandwidth,
    Codec,
    Connection,
    CryptoAttribute,
    CryptoKey,
    Direction,
    MediaDescription,
    Origin,
    PayloadFormat,
    RtcpAttribute,
    SdpError,
    SdpErrorKind,
    SessionDescription,
    Timing,
    build_answer,
    description,
    format_crypto,
    format_fmtp,
    format_rtcp,
    format_rtpmap,
    make_offer,
    negotiate_audio,
    parse_crypto,
    parse_fmtp,
    parse_ptime,
    parse_rtcp,
    parse_rtpmap,
    parse_sdp,
    serialize_sdp,
    syntax,
)

fuzz = settings(max_examples=300, deadline=None, database=None)

G729 = Codec(name="G729", clock_rate=8000)
TELEPHONE_EVENT_48K = Codec(name="telephone-event", clock_rate=48000)
OURS = (PCMU, PCMA, G722, TELEPHONE_EVENT)


def sdp(text: str) -> str:
    """A sample as sent on the wire: CRLF line ends (RFC 4566 s5)."""
    return text.replace("\n", "\r\n")


# -- samples --------------------------------------------------------------------------------------

# Asterisk 20 chan_pjsip, outbound INVITE to a trunk (allow=ulaw,alaw,g722,gsm; DTMF rfc4733)
ASTERISK_OFFER = sdp("""\
v=0
o=- 1693829221 1693829223 IN IP4 203.0.113.10
s=Asterisk
c=IN IP4 203.0.113.10
t=0 0
m=audio 17932 RTP/AVP 0 8 9 3 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:9 G722/8000
a=rtpmap:3 GSM/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=maxptime:150
a=sendrecv
""")

# FreeSWITCH 1.10 outbound leg with opus first (codec-prefs=OPUS,G722,PCMU,PCMA), CN and a=rtcp
FREESWITCH_OFFER = sdp("""\
v=0
o=FreeSWITCH 1700023405 1700023406 IN IP4 198.51.100.20
s=FreeSWITCH
c=IN IP4 198.51.100.20
t=0 0
m=audio 24618 RTP/AVP 102 9 0 8 101 13
a=rtpmap:102 opus/48000/2
a=fmtp:102 useinbandfec=1; maxaveragebitrate=30000; maxplaybackrate=48000; ptime=20; minptime=10
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=rtpmap:13 CN/8000
a=ptime:20
a=sendrecv
a=rtcp:24619 IN IP4 198.51.100.20
""")

# Twilio Elastic SIP Trunking, INVITE to an origination URI (G.711 and RFC 4733 events 0-16)
TWILIO_OFFER = sdp("""\
v=0
o=root 1376817826 1376817826 IN IP4 54.172.60.1
s=Twilio Media Gateway
c=IN IP4 54.172.60.1
t=0 0
m=audio 14360 RTP/AVP 0 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=maxptime:150
a=sendrecv
""")

# baresip 3.10 softphone: opus first, then G722 and G.711, session-level a=tool, b=AS
BARESIP_OFFER = sdp("""\
v=0
o=- 1412003891 3812654082 IN IP4 192.0.2.33
s=-
c=IN IP4 192.0.2.33
t=0 0
a=tool:baresip 3.10.1
m=audio 10340 RTP/AVP 96 9 0 8 101
b=AS:128
a=rtpmap:96 opus/48000/2
a=fmtp:96 stereo=1;sprop-stereo=1
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=rtcp-rsize
a=sendrecv
a=label:1
a=ssrc:2138651427 cname:sip:alice@example.com
a=ptime:20
""")

# WebRTC (Chrome-style audio m-section behind a SIP/WebRTC gateway): DTLS-SRTP, ICE, BUNDLE,
# rtcp-mux, telephone-event at both 48000 and 8000, c=0.0.0.0 as the pre-ICE default address
WEBRTC_OFFER = sdp("""\
v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0
a=extmap-allow-mixed
a=msid-semantic: WMS 5mXjc1bq
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:Xq9v
a=ice-pwd:Cj0bSk1xZkEz4GfR3rYnN8bP
a=ice-options:trickle
a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:A4:3A:A2:40
a=setup:actpass
a=mid:0
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=sendrecv
a=msid:5mXjc1bq 7c4f6b1e-3a8d-4c1e-9f0b-2d6e8a1b3c5d
a=rtcp-mux
a=rtpmap:111 opus/48000/2
a=rtcp-fb:111 transport-cc
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:63 red/48000/2
a=fmtp:63 111/111
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:13 CN/8000
a=rtpmap:110 telephone-event/48000
a=rtpmap:126 telephone-event/8000
a=ssrc:3735928559 cname:q1w2e3r4t5y6u7i8
""")

# SDES-SRTP offer (Asterisk media_encryption=sdes style, two suites; keys from RFC 4568 s4)
SDES_OFFER = sdp("""\
v=0
o=- 20518 20519 IN IP4 192.0.2.50
s=Asterisk
c=IN IP4 192.0.2.50
t=0 0
m=audio 12000 RTP/SAVP 0 8 101
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32
a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj|2^20|1:32
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
""")

# Asterisk hold re-INVITE (moh_passthrough=no): same session, version bumped, a=sendonly
ASTERISK_HOLD_OFFER = sdp("""\
v=0
o=- 1693829221 1693829224 IN IP4 203.0.113.10
s=Asterisk
c=IN IP4 203.0.113.10
t=0 0
m=audio 17932 RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=maxptime:150
a=sendonly
""")

# RFC 2543-style hold from an older Cisco IOS gateway: c=0.0.0.0, no direction attribute
CISCO_RFC2543_HOLD_OFFER = sdp("""\
v=0
o=CiscoSystemsSIP-GW-UserAgent 4069 2713 IN IP4 192.0.2.70
s=SIP Call
c=IN IP4 0.0.0.0
t=0 0
m=audio 18444 RTP/AVP 0 101
c=IN IP4 0.0.0.0
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
""")

# FreeSWITCH re-INVITE when both ends are on hold: a=inactive
FREESWITCH_INACTIVE_OFFER = sdp("""\
v=0
o=FreeSWITCH 1700023405 1700023407 IN IP4 198.51.100.20
s=FreeSWITCH
c=IN IP4 198.51.100.20
t=0 0
m=audio 24618 RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=inactive
a=rtcp:24619 IN IP4 198.51.100.20
""")

# PBX hold re-INVITE with the direction at session level (applies to every m-line, RFC 4566 s6)
SESSION_SENDONLY_HOLD_OFFER = sdp("""\
v=0
o=PBX 7714 7715 IN IP4 192.0.2.60
s=session
c=IN IP4 192.0.2.60
t=0 0
a=sendonly
m=audio 30000 RTP/AVP 8 101
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
""")

# Linphone over IPv6: static payload types 0 and 8 without rtpmap lines (RFC 3551 applies)
LINPHONE_IPV6_OFFER = sdp("""\
v=0
o=bob 3452 3452 IN IP6 2001:db8::10
s=Talk
c=IN IP6 2001:db8::10
t=0 0
m=audio 7078 RTP/AVP 96 8 0 101
a=rtpmap:96 opus/48000/2
a=fmtp:96 useinbandfec=1
a=rtpmap:101 telephone-event/8000
a=rtcp-fb:* trr-int 1000
a=rtcp-fb:* ccm tmmbr
""")

# Linphone with video enabled: an audio and a video stream
LINPHONE_VIDEO_OFFER = sdp("""\
v=0
o=alice 2372 3153 IN IP4 192.0.2.80
s=Talk
c=IN IP4 192.0.2.80
t=0 0
a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics
m=audio 7078 RTP/AVP 96 0 8 101
a=rtpmap:96 opus/48000/2
a=fmtp:96 useinbandfec=1
a=rtpmap:101 telephone-event/8000
m=video 9078 RTP/AVP 96 97
a=rtpmap:96 VP8/90000
a=rtpmap:97 H264/90000
a=fmtp:97 profile-level-id=42801F
a=rtcp-fb:* ccm fir
""")

# RFC 3264 s10.1 offer: empty s=, a host name in c=, audio plus video
RFC3264_OFFER = sdp("""\
v=0
o=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com
s=
c=IN IP4 host.atlanta.example.com
t=0 0
m=audio 49170 RTP/AVP 0 8 97
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:97 iLBC/8000
m=video 51372 RTP/AVP 31 32
a=rtpmap:31 H261/90000
a=rtpmap:32 MPV/90000
""")

# T.38 re-INVITE from a fax ATA: no audio at all
T38_OFFER = sdp("""\
v=0
o=- 1 2 IN IP4 192.0.2.90
s=-
c=IN IP4 192.0.2.90
t=0 0
m=image 4000 udptl t38
a=T38FaxVersion:0
a=T38MaxBitRate:14400
a=T38FaxRateManagement:transferredTCF
a=T38FaxMaxBuffer:262
a=T38FaxMaxDatagram:176
a=T38FaxUdpEC:t38UDPRedundancy
""")

# RFC 4566 s5 example, plus every rarely used field (p=, b=, r=, z=, k=, media i=/b=/k=,
# m= with a port count, multicast c= with a TTL)
RFC4566_FULL = sdp("""\
v=0
o=jdoe 2890844526 2890842807 IN IP4 10.47.16.5
s=SDP Seminar
i=A Seminar on the session description protocol
u=http://www.example.com/seminars/sdp.pdf
e=j.doe@example.com (Jane Doe)
p=+1 617 555-6011
c=IN IP4 224.2.17.12/127
b=CT:384
t=2873397496 2873404696
r=604800 3600 0 90000
r=7d 1h 0 25h
t=0 0
z=2882844526 -1h 2898848070 0
k=prompt
a=recvonly
m=audio 49170/2 RTP/AVP 0
i=The audio
b=AS:64
k=clear:secret
m=video 51372 RTP/AVP 99
c=IN IP4 224.2.17.13/127/2
a=rtpmap:99 h263-1998/90000
""")

SAMPLES = {
    "asterisk": ASTERISK_OFFER,
    "freeswitch": FREESWITCH_OFFER,
    "twilio": TWILIO_OFFER,
    "baresip": BARESIP_OFFER,
    "webrtc": WEBRTC_OFFER,
    "sdes": SDES_OFFER,
    "asterisk-hold": ASTERISK_HOLD_OFFER,
    "cisco-rfc2543-hold": CISCO_RFC2543_HOLD_OFFER,
    "freeswitch-inactive": FREESWITCH_INACTIVE_OFFER,
    "session-sendonly": SESSION_SENDONLY_HOLD_OFFER,
    "linphone-ipv6": LINPHONE_IPV6_OFFER,
    "linphone-video": LINPHONE_VIDEO_OFFER,
    "rfc3264": RFC3264_OFFER,
    "t38": T38_OFFER,
    "rfc4566-full": RFC4566_FULL,
}


def parse(text: str) -> SessionDescription:
    return parse_sdp(text.encode())


def rejected(data: bytes | str) -> SdpError:
    """The malformed-SDP error `parse_sdp` must raise for `data`."""
    with pytest.raises(SdpError) as info:
        parse_sdp(data)
    assert info.value.kind is SdpErrorKind.MALFORMED
    assert str(info.value) == f"SDP malformed: {info.value.detail}"
    return info.value


def not_acceptable(offer: SessionDescription, *args: object, **kwargs: object) -> str:
    """The detail of the not-acceptable error `negotiate_audio` must raise for `offer`."""
    with pytest.raises(SdpError) as info:
        negotiate_audio(offer, *args, **kwargs)  # type: ignore[arg-type]
    assert info.value.kind is SdpErrorKind.NOT_ACCEPTABLE
    assert str(info.value) == f"SDP not acceptable: {info.value.detail}"
    return info.value.detail


# -- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLES)
def test_serialise_of_parsed_sample_equals_input(name: str) -> None:
    text = SAMPLES[name]
    assert serialize_sdp(parse(text)) == text.encode()


@pytest.mark.parametrize("name", SAMPLES)
def test_lf_only_and_str_input_parse_the_same(name: str) -> None:
    text = SAMPLES[name]
    expected = parse(text)
    assert parse_sdp(text.replace("\r\n", "\n")) == expected
    assert parse_sdp(text) == expected
    # no final line end, and extra blank lines after the body
    assert parse_sdp(text.rstrip("\r\n")) == expected
    assert parse_sdp(text + "\r\n\n") == expected


@pytest.mark.parametrize("name", SAMPLES)
def test_parse_serialise_parse_is_stable(name: str) -> None:
    sd = parse(SAMPLES[name])
    assert parse_sdp(serialize_sdp(sd)) == sd


def test_lenient_spacing_and_order_normalise() -> None:
    # Extra spaces between fields and a= before c= in a media section (seen from some phones)
    sloppy = (
        "v=0\r\no=-  1 2  IN IP4 192.0.2.1\r\ns=-\r\nt=0  0\r\n"
        "m=audio 4000  RTP/AVP 0 8 \r\na=sendrecv\r\nc=IN IP4  192.0.2.1\r\n"
    )
    sd = parse_sdp(sloppy)
    assert sd.media[0].formats == ("0", "8")
    assert sd.media[0].connection == Connection(address="192.0.2.1")
    assert serialize_sdp(sd) == (
        b"v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n"
        b"m=audio 4000 RTP/AVP 0 8\r\nc=IN IP4 192.0.2.1\r\na=sendrecv\r\n"
    )


def test_non_utf8_bytes_survive_a_round_trip() -> None:
    data = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=caf\xe9\r\nt=0 0\r\n"
    assert serialize_sdp(parse_sdp(data)) == data


def test_utf8_text_is_decoded() -> None:
    data = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=Café ☎\r\nt=0 0\r\n".encode()
    sd = parse_sdp(data)
    assert sd.session_name == "Café ☎"
    assert serialize_sdp(sd) == data


# -- parsed content -------------------------------------------------------------------------------


def test_asterisk_offer_fields() -> None:
    sd = parse(ASTERISK_OFFER)
    assert sd.version == 0
    assert sd.origin == Origin(
        username="-",
        session_id=1693829221,
        session_version=1693829223,
        address="203.0.113.10",
    )
    assert sd.session_name == "Asterisk"
    assert sd.connection == Connection(net_type="IN", addr_type="IP4", address="203.0.113.10")
    assert sd.timing == (Timing(start=0, stop=0),)
    (audio,) = sd.media
    assert (audio.media, audio.port, audio.port_count, audio.proto) == (
        "audio",
        17932,
        None,
        "RTP/AVP",
    )
    assert audio.formats == ("0", "8", "9", "3", "101")
    assert audio.rtpmap == {
        0: PCMU,
        8: PCMA,
        9: G722,
        3: Codec(name="GSM", clock_rate=8000),
        101: TELEPHONE_EVENT,
    }
    assert audio.fmtp == {"101": "0-16"}
    assert audio.ptime == 20
    assert audio.maxptime == 150
    assert audio.direction is Direction.SENDRECV
    assert audio.rtcp is None
    assert audio.crypto == ()
    assert not audio.rtcp_mux
    assert not audio.is_rejected
    assert audio.attributes[-1] == Attribute(name="sendrecv", value=None)


def test_freeswitch_offer_rtcp_and_opus_fmtp() -> None:
    audio = parse(FREESWITCH_OFFER).media[0]
    assert audio.rtcp == RtcpAttribute(port=24619, connection=Connection(address="198.51.100.20"))
    assert audio.rtpmap[102] == OPUS
    assert audio.fmtp["102"].startswith("useinbandfec=1; ")
    assert [p.payload_type for p in audio.payload_formats] == [102, 9, 0, 8, 101, 13]


def test_baresip_offer_session_attribute_and_bandwidth() -> None:
    sd = parse(BARESIP_OFFER)
    assert sd.attributes == (Attribute(name="tool", value="baresip 3.10.1"),)
    assert sd.direction is None
    audio = sd.media[0]
    assert audio.bandwidths == (Bandwidth(type="AS", value=128),)
    assert audio.attribute_values("ssrc") == ("2138651427 cname:sip:alice@example.com",)
    assert audio.has_attribute("rtcp-rsize")
    assert audio.attribute_values("nope") == ()


def test_webrtc_offer_fields() -> None:
    sd = parse(WEBRTC_OFFER)
    assert sd.connection is None
    audio = sd.media[0]
    assert audio.proto == "UDP/TLS/RTP/SAVPF"
    assert audio.connection == Connection(address="0.0.0.0")
    assert sd.connection_for(audio) == Connection(address="0.0.0.0")
    assert audio.rtcp_mux
    assert audio.rtcp == RtcpAttribute(port=9, connection=Connection(address="0.0.0.0"))
    assert sd.attributes[2] == Attribute(name="msid-semantic", value=" WMS 5mXjc1bq")
    assert audio.rtpmap[110] == TELEPHONE_EVENT_48K
    assert audio.fmtp["63"] == "111/111"
    # ICE: the 0.0.0.0 default address is not a hold (RFC 8839 s5.1)
    assert not sd.is_on_hold(audio)


def test_sdes_offer_crypto_lines() -> None:
    audio = parse(SDES_OFFER).media[0]
    first, second = audio.crypto
    assert first == CryptoAttribute(
        tag=1,
        suite="AES_CM_128_HMAC_SHA1_80",
        keys=(
            CryptoKey(method="inline", info="PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32"),
        ),
    )
    (key,) = first.keys
    assert key.key_salt == "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR"
    assert key.lifetime == "2^20"
    assert key.mki == "1:32"
    assert second.tag == 2
    assert second.suite == "AES_CM_128_HMAC_SHA1_32"


def test_rfc4566_full_rare_fields() -> None:
    sd = parse(RFC4566_FULL)
    assert sd.information == "A Seminar on the session description protocol"
    assert sd.uri == "http://www.example.com/seminars/sdp.pdf"
    assert sd.emails == ("j.doe@example.com (Jane Doe)",)
    assert sd.phones == ("+1 617 555-6011",)
    assert sd.connection is not None
    assert sd.connection.host == "224.2.17.12"
    assert not sd.connection.is_null
    assert sd.bandwidths == (Bandwidth(type="CT", value=384),)
    assert sd.timing == (
        Timing(start=2873397496, stop=2873404696, repeats=("604800 3600 0 90000", "7d 1h 0 25h")),
        Timing(start=0, stop=0),
    )
    assert sd.time_zones == "2882844526 -1h 2898848070 0"
    assert sd.key == "prompt"
    assert sd.direction is Direction.RECVONLY
    audio, video = sd.media
    assert audio.port_count == 2
    assert audio.title == "The audio"
    assert audio.key == "clear:secret"
    assert audio.bandwidths == (Bandwidth(type="AS", value=64),)
    assert sd.direction_for(audio) is Direction.RECVONLY
    assert video.connection == Connection(address="224.2.17.13/127/2")
    assert video.rtpmap == {99: Codec(name="h263-1998", clock_rate=90000)}


def test_static_payload_types_apply_without_rtpmap() -> None:
    audio = parse(LINPHONE_IPV6_OFFER).media[0]
    assert audio.payload_formats == (
        PayloadFormat(payload_type=96, codec=OPUS, fmtp="useinbandfec=1"),
        PayloadFormat(payload_type=8, codec=PCMA),
        PayloadFormat(payload_type=0, codec=PCMU),
        PayloadFormat(payload_type=101, codec=TELEPHONE_EVENT),
    )


def test_static_table_follows_rfc3551() -> None:
    assert STATIC_PAYLOAD_TYPES[0] == PCMU
    assert STATIC_PAYLOAD_TYPES[8] == PCMA
    # RFC 3551 s4.5.2: G.722's RTP clock is 8000 although it samples at 16 kHz
    assert STATIC_PAYLOAD_TYPES[9] == G722
    assert G722.clock_rate == 8000
    assert STATIC_PAYLOAD_TYPES[3].name == "GSM"
    assert STATIC_PAYLOAD_TYPES[18] == G729
    assert STATIC_PAYLOAD_TYPES[10] == Codec(name="L16", clock_rate=44100, channels=2)


def test_payload_formats_skip_unknown_dynamic_and_non_rtp() -> None:
    audio = MediaDescription(
        media="audio",
        port=4000,
        proto="RTP/AVP",
        formats=("0", "97", "x"),
        attributes=(Attribute(name="rtpmap", value="0 pcmu/8000"),),
    )
    # 97 has no rtpmap; "x" is not a payload type (a hand-built description); rtpmap wins
    assert audio.payload_formats == (
        PayloadFormat(payload_type=0, codec=Codec(name="pcmu", clock_rate=8000)),
    )
    assert parse(T38_OFFER).media[0].payload_formats == ()


def test_repeated_rtpmap_and_fmtp_first_wins() -> None:
    audio = MediaDescription(
        media="audio",
        port=4000,
        proto="RTP/AVP",
        formats=("101",),
        attributes=(
            Attribute(name="rtpmap", value="101 telephone-event/8000"),
            Attribute(name="rtpmap", value="101 PCMU/8000"),
            Attribute(name="fmtp", value="101 0-16"),
            Attribute(name="fmtp", value="101 0-15"),
        ),
    )
    assert audio.rtpmap == {101: TELEPHONE_EVENT}
    assert audio.fmtp == {"101": "0-16"}


@pytest.mark.parametrize("name", ["rtpmap", "fmtp", "ptime", "maxptime", "rtcp", "crypto"])
def test_helpers_on_hand_built_valueless_attribute_raise_malformed(name: str) -> None:
    md = MediaDescription(
        media="audio",
        port=4000,
        proto="RTP/AVP",
        formats=("0",),
        attributes=(Attribute(name=name),),
    )
    with pytest.raises(SdpError) as info:
        getattr(md, name)
    assert info.value.kind is SdpErrorKind.MALFORMED
    assert f"a={name} needs a value" in info.value.detail


# -- hold and direction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample", "direction", "on_hold"),
    [
        (ASTERISK_OFFER, Direction.SENDRECV, False),
        (ASTERISK_HOLD_OFFER, Direction.SENDONLY, True),
        (FREESWITCH_INACTIVE_OFFER, Direction.INACTIVE, True),
        (SESSION_SENDONLY_HOLD_OFFER, Direction.SENDONLY, True),
        (CISCO_RFC2543_HOLD_OFFER, Direction.SENDRECV, True),
        (WEBRTC_OFFER, Direction.SENDRECV, False),
    ],
)
def test_direction_and_hold(sample: str, direction: Direction, on_hold: bool) -> None:
    sd = parse(sample)
    assert sd.direction_for(sd.media[0]) is direction
    assert sd.is_on_hold(sd.media[0]) is on_hold


def test_recvonly_is_not_hold_and_missing_connection_is_not_null() -> None:
    md = MediaDescription(
        media="audio",
        port=4000,
        proto="RTP/AVP",
        formats=("0",),
        attributes=(Attribute(name="recvonly"),),
    )
    sd = SessionDescription(
        origin=Origin(username="-", session_id=1, session_version=1, address="x")
    )
    assert sd.connection_for(md) is None
    assert not sd.is_on_hold(md)


def test_ipv6_null_address_is_hold() -> None:
    assert Connection(addr_type="IP6", address="::").is_null
    assert not Connection(addr_type="IP6", address="2001:db8::1").is_null


@pytest.mark.parametrize(
    ("direction", "sends", "receives", "mirrored"),
    [
        (Direction.SENDRECV, True, True, Direction.SENDRECV),
        (Direction.SENDONLY, True, False, Direction.RECVONLY),
        (Direction.RECVONLY, False, True, Direction.SENDONLY),
        (Direction.INACTIVE, False, False, Direction.INACTIVE),
    ],
)
def test_direction_flags(
    direction: Direction, sends: bool, receives: bool, mirrored: Direction
) -> None:
    assert (direction.sends, direction.receives) == (sends, receives)
    assert Direction.from_flags(sends=sends, receives=receives) is direction
    assert direction.mirrored() is mirrored
    assert direction.intersect(Direction.SENDRECV) is direction
    assert direction.intersect(Direction.INACTIVE) is Direction.INACTIVE


def test_direction_intersect_mixed() -> None:
    assert Direction.SENDONLY.intersect(Direction.RECVONLY) is Direction.INACTIVE
    assert Direction.SENDRECV.intersect(Direction.RECVONLY) is Direction.RECVONLY


# -- codecs and attribute grammars ----------------------------------------------------------------


def test_codec_matching_and_text() -> None:
    assert Codec(name="pcmu", clock_rate=8000).matches(PCMU)
    assert Codec(name="PCMU", clock_rate=8000) != Codec(name="pcmu", clock_rate=8000)
    assert not PCMU.matches(PCMA)
    assert not Codec(name="opus", clock_rate=48000).matches(OPUS)
    assert not Codec(name="PCMU", clock_rate=16000).matches(PCMU)
    assert str(PCMU) == "PCMU/8000"
    assert str(OPUS) == "opus/48000/2"
    assert Codec(name="Telephone-Event", clock_rate=8000).is_telephone_event
    assert not PCMU.is_telephone_event


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "PC MU", "clock_rate": 8000},
        {"name": "opus/48000", "clock_rate": 48000},
        {"name": "", "clock_rate": 8000},
        {"name": "PCMU", "clock_rate": 0},
        {"name": "PCMU", "clock_rate": 8000, "channels": 0},
    ],
)
def test_codec_refuses_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Codec(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0 PCMU/8000", (0, PCMU)),
        ("96 opus/48000/2", (96, OPUS)),
        ("  101 telephone-event/8000 ", (101, TELEPHONE_EVENT)),
        ("9 G722/8000/1", (9, G722)),
        ("127 L16/44100/2", (127, Codec(name="L16", clock_rate=44100, channels=2))),
    ],
)
def test_parse_rtpmap(value: str, expected: tuple[int, Codec]) -> None:
    assert parse_rtpmap(value) == expected
    assert parse_rtpmap(format_rtpmap(*expected)) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "PCMU/8000",
        "0 PCMU",
        "0 PCMU/x",
        "128 PCMU/8000",
        "0 PCMU/0",
        "0 PCMU/8000/0",
        "0 /8000",
    ],
)
def test_parse_rtpmap_refuses(value: str) -> None:
    with pytest.raises(SdpError) as info:
        parse_rtpmap(value)
    assert info.value.kind is SdpErrorKind.MALFORMED


def test_fmtp_grammar() -> None:
    assert parse_fmtp("101 0-16") == ("101", "0-16")
    assert parse_fmtp("111 minptime=10;useinbandfec=1") == ("111", "minptime=10;useinbandfec=1")
    assert parse_fmtp("101") == ("101", "")
    assert format_fmtp("101", "0-16") == "101 0-16"
    assert format_fmtp("101", "") == "101"
    for value in ("", " ", "(x) y"):
        with pytest.raises(SdpError):
            parse_fmtp(value)


def test_ptime_grammar() -> None:
    assert parse_ptime("20") == 20
    assert parse_ptime(" 30 ") == 30
    for value in ("", "20ms", "-1", "1234567"):
        with pytest.raises(SdpError):
            parse_ptime(value)


def test_rtcp_grammar() -> None:
    plain = RtcpAttribute(port=53020)
    full = RtcpAttribute(port=53020, connection=Connection(addr_type="IP6", address="2001:db8::1"))
    assert parse_rtcp("53020") == plain
    assert parse_rtcp("53020 IN IP6 2001:db8::1") == full
    assert format_rtcp(plain) == "53020"
    assert parse_rtcp(format_rtcp(full)) == full
    for value in ("", "53020 IN IP4", "65536", "x", "53020 I(N IP4 192.0.2.1"):
        with pytest.raises(SdpError):
            parse_rtcp(value)


def test_crypto_grammar() -> None:
    value = (
        "1 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj|2^20|1:32;"
        "inline:QUJjZGVmMTIzNDU2Nzg5QUJDREUwMTIzNDU2Nzg5|2^20|2:32 KDR=1 UNENCRYPTED_SRTCP"
    )
    crypto = parse_crypto(value)
    assert [k.mki for k in crypto.keys] == ["1:32", "2:32"]
    assert crypto.session_params == ("KDR=1", "UNENCRYPTED_SRTCP")
    assert format_crypto(crypto) == value
    assert parse_crypto(format_crypto(crypto)) == crypto
    # lifetime and MKI are optional; an MKI may come without a lifetime
    bare = parse_crypto("7 AES_256_CM_HMAC_SHA1_80\tINLINE:QUJjZGVmMTIzNDU2Nzg5QUJD")
    assert bare.tag == 7
    assert (bare.keys[0].lifetime, bare.keys[0].mki) == (None, None)
    mki_only = parse_crypto("1 AES_CM_128_HMAC_SHA1_80 inline:QUJj|1:4").keys[0]
    assert (mki_only.key_salt, mki_only.lifetime, mki_only.mki) == ("QUJj", None, "1:4")
    # another key method's info is kept as it is
    other = parse_crypto("1 SUITE_X uri:https://kms.example.com/key").keys[0]
    assert other == CryptoKey(method="uri", info="https://kms.example.com/key")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("1 AES_CM_128_HMAC_SHA1_80", "<tag> <suite> <key-params>"),
        ("1234567890 AES_CM_128_HMAC_SHA1_80 inline:QUJj", "tag"),
        ("x AES_CM_128_HMAC_SHA1_80 inline:QUJj", "tag"),
        ("1 AES-CM inline:QUJj", "suite"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline", "key-param"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:QUJj;", "key-param"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:QU*Jj", "inline key"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:QUJj|2^20|1:4|9", "inline key"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:QUJj KDR=\u00e9", "session-param"),
    ],
)
def test_crypto_grammar_refuses(value: str, fragment: str) -> None:
    with pytest.raises(SdpError) as info:
        parse_crypto(value)
    assert info.value.kind is SdpErrorKind.MALFORMED
    assert fragment in info.value.detail


# -- malformed input ------------------------------------------------------------------------------

HEAD = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
AUDIO = "m=audio 4000 RTP/AVP 0\r\n"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ("", "empty SDP"),
        ("\r\n\r\n", "empty SDP"),
        ("o=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n", "line 1: an SDP body starts with v="),
        ("v=1\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n", "version 1 is not supported"),
        ("v=x\r\n", "version 'x' is not a number"),
        (HEAD + "v=0\r\n", "line 6: more than one v= line"),
        ("v=0\r\ns=-\r\nt=0 0\r\n", "no o= line"),
        ("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nt=0 0\r\n", "no s= line"),
        ("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n", "no t= line"),
        (HEAD.replace("s=-", "s=-\r\ns=again"), "line 4: more than one s= line"),
        (HEAD + "o=- 2 2 IN IP4 192.0.2.1\r\n", "more than one o= line"),
        (HEAD + "c=IN IP4 192.0.2.2\r\n", "more than one c= line"),
        (HEAD + "i=a\r\ni=b\r\n", "more than one i= line"),
        (HEAD + "u=a\r\nu=b\r\n", "more than one u= line"),
        (HEAD + "z=0 0\r\nz=0 0\r\n", "more than one z= line"),
        (HEAD + "k=prompt\r\nk=prompt\r\n", "more than one k= line"),
        (HEAD + "x=1\r\n", "line 6: x= is not an SDP session-level line"),
        (HEAD + "V=0\r\n", "is not <type>=<value>"),
        (HEAD + "a = b\r\n", "is not <type>=<value>"),
        (HEAD + "just text\r\n", "is not <type>=<value>"),
        (HEAD + "\r\na=x\r\n", "line 6"),
        (HEAD + "a=x\ry\r\n", "bare CR"),
        (HEAD + "a=x\0\r\n", "NUL"),
        (HEAD + "a=\r\n", "attribute name '' is not a token"),
        (HEAD + "a=:x\r\n", "attribute name"),
        (HEAD + "a=sendonly\r\na=inactive\r\n", "more than one session-level direction"),
        ("v=0\r\no=- 1 1 IN IP4\r\ns=-\r\nt=0 0\r\n", "line 2: o= needs"),
        ("v=0\r\no=- x 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n", "sess-id 'x'"),
        ("v=0\r\no=- 1 1 I(N IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n", "nettype"),
        ("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0\r\n", "t= needs"),
        ("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=now 0\r\n", "t= start"),
        (HEAD.replace("c=IN IP4 192.0.2.1", "c=IN IP4"), "c= needs"),
        (HEAD.replace("c=IN IP4 192.0.2.1", "c=IN IP4 192.0.2.1\t"), "c= address"),
        (HEAD.replace("o=- 1", "o=\x7f 1"), "o= username"),
        (HEAD.replace("c=IN IP4", "c=IN I@P4"), "addrtype"),
        (HEAD + "b=AS\r\n", "b=AS does not match"),
        (HEAD + "b=AS:fast\r\n", "does not match <bwtype>:<bandwidth>"),
        ("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nr=1 2 3\r\nt=0 0\r\n", "r= must follow a t="),
        (HEAD + "r=1 2\r\n", "r=1 2 does not match"),
        (HEAD + "r=1 2 x\r\n", "does not match <interval>"),
        (HEAD + "z=2882844526\r\n", "z=2882844526 does not match"),
        (HEAD + "z=\r\n", "z= does not match"),
        (HEAD + "z=1 +1h\r\n", "does not match <adjustment time>"),
        (HEAD + "k=\r\n", "k= '' does not match"),
        (HEAD + "k=base 64:x\r\n", "k= "),
        (HEAD + "m=audio 4000 RTP/AVP\r\n", "line 6: m= needs"),
        (HEAD + "m=au(dio 4000 RTP/AVP 0\r\n", "m= media"),
        (HEAD + "m=audio port RTP/AVP 0\r\n", "m= port 'port' is not a number"),
        (HEAD + "m=audio -4000 RTP/AVP 0\r\n", "m= port"),
        (HEAD + "m=audio 65536 RTP/AVP 0\r\n", "out of range (max 65535)"),
        (HEAD + "m=audio 123456 RTP/AVP 0\r\n", "m= port"),
        # DIGIT is %x30-39 only: digits of other scripts (which str.isdigit takes) are not
        (HEAD + "m=audio \u0664\u0660\u0660\u0660 RTP/AVP 0\r\n", "m= port"),
        (HEAD + AUDIO + "a=ptime:\uff12\uff10\r\n", "ptime"),
        (HEAD.replace("v=0", "v=\u00b2"), "version"),
        (HEAD + "m=audio 4000/x RTP/AVP 0\r\n", "port count"),
        (HEAD + "m=audio 4000/0 RTP/AVP 0\r\n", "port count must be at least 1"),
        (HEAD + "m=audio 4000 RTP//AVP 0\r\n", "m= proto"),
        (HEAD + "m=audio 4000 RTP/AVP PCMU\r\n", "payload type 'PCMU'"),
        (HEAD + "m=audio 4000 RTP/AVP 128\r\n", "payload type 128 is out of range"),
        (HEAD + "m=audio 4000 RTP/AVP 0 (8)\r\n", "m= fmt"),
        (HEAD + "m=audio 4000 RTP/AVP " + " ".join(["0"] * (MAX_FORMATS + 1)), "formats"),
        (HEAD + AUDIO + "o=- 1 1 IN IP4 192.0.2.1\r\n", "line 7: o= is not allowed in a media"),
        (HEAD + AUDIO + "t=0 0\r\n", "t= is not allowed in a media"),
        (HEAD + AUDIO + "i=a\r\ni=b\r\n", "line 8: more than one i= line"),
        (HEAD + AUDIO + "c=IN IP4 192.0.2.1\r\nc=IN IP4 192.0.2.2\r\n", "more than one c="),
        (HEAD + AUDIO + "k=prompt\r\nk=prompt\r\n", "more than one k="),
        (HEAD + AUDIO + "b=AS:x\r\n", "line 7: b=AS:x"),
        (HEAD + AUDIO + "a=sendonly\r\na=recvonly\r\n", "line 6: more than one direction"),
        (HEAD + AUDIO + "a=rtpmap:0 PCMU\r\n", "line 7: a=rtpmap:0 PCMU does not match"),
        (HEAD + AUDIO + "a=rtpmap\r\n", "a=rtpmap needs a value"),
        (HEAD + AUDIO + "a=fmtp:\r\n", "a=fmtp: does not match"),
        (HEAD + AUDIO + "a=ptime:20ms\r\n", "ptime '20ms'"),
        (HEAD + AUDIO + "a=maxptime:\r\n", "ptime ''"),
        (HEAD + AUDIO + "a=rtcp:x\r\n", "rtcp port"),
        (HEAD + AUDIO + "a=crypto:1 X\r\n", "a=crypto:1 X does not match"),
        (HEAD + AUDIO + "a=c(rypto:1\r\n", "attribute name"),
        (
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n" + AUDIO,
            "line 5: no c= for this media and none at session level",
        ),
    ],
)
def test_malformed_sdp_is_refused(data: str, fragment: str) -> None:
    error = rejected(data)
    assert fragment in error.detail, error.detail
    assert str(error).startswith("SDP malformed: ")


def test_rejected_stream_needs_no_connection() -> None:
    body = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=video 0 RTP/AVP 31\r\n"
    assert parse_sdp(body).media[0].is_rejected
    no_media = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n"
    assert parse_sdp(no_media).media == ()


def test_non_rtp_formats_are_tokens() -> None:
    body = HEAD + "m=application 5000 UDP/DTLS/SCTP webrtc-datachannel\r\n"
    assert parse_sdp(body).media[0].formats == ("webrtc-datachannel",)


def test_unknown_attributes_are_not_checked() -> None:
    body = HEAD + AUDIO + "a=x-anything:!!@@ whatever\r\na=ptime-ish\r\n"
    assert parse_sdp(body).media[0].attributes == (
        Attribute(name="x-anything", value="!!@@ whatever"),
        Attribute(name="ptime-ish"),
    )


def test_huge_input_is_malformed() -> None:
    padding = "a=x-pad:" + "z" * 100 + "\r\n"
    body = HEAD + padding * (MAX_SDP_BYTES // len(padding) + 1)
    assert "larger than" in rejected(body.encode()).detail
    assert "larger than" in rejected(body).detail
    # counted in bytes, not characters
    wide = HEAD + "s=" + "é" * (MAX_SDP_BYTES // 2) + "\r\n"
    assert len(wide) < MAX_SDP_BYTES
    assert "larger than" in rejected(wide).detail


def test_too_many_lines_is_malformed() -> None:
    body = HEAD + "a=x\r\n" * (MAX_SDP_LINES - 4)
    assert "more than" in rejected(body).detail
    assert parse_sdp(HEAD + "a=x\r\n" * (MAX_SDP_LINES - 5))


def test_too_many_media_is_malformed() -> None:
    assert len(parse_sdp(HEAD + AUDIO * MAX_MEDIA).media) == MAX_MEDIA
    assert f"more than {MAX_MEDIA} media" in rejected(HEAD + AUDIO * (MAX_MEDIA + 1)).detail


def test_unencodable_text_is_malformed() -> None:
    assert "not encodable" in rejected(HEAD + "s=\ud800\r\n").detail


# -- serialise ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"session_name": "evil\r\nm=audio 1 RTP/AVP 0"},
        {"information": "a\nb"},
        {"attributes": (Attribute(name="x", value="\0"),)},
    ],
)
def test_serialise_refuses_line_breaks(change: dict[str, object]) -> None:
    sd = dataclasses.replace(parse(TWILIO_OFFER), **change)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        serialize_sdp(sd)


def test_serialise_hand_built_description() -> None:
    sd = SessionDescription(
        origin=Origin(username="-", session_id=7, session_version=8, address="192.0.2.9"),
        connection=Connection(address="192.0.2.9"),
        media=(MediaDescription(media="audio", port=5000, proto="RTP/AVP", formats=("0",)),),
    )
    assert serialize_sdp(sd) == (
        b"v=0\r\no=- 7 8 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n"
        b"m=audio 5000 RTP/AVP 0\r\n"
    )


# -- offer/answer ---------------------------------------------------------------------------------


def test_twilio_offer_answer() -> None:
    offer = parse(TWILIO_OFFER)
    audio = negotiate_audio(offer, OURS)
    assert audio == AudioAnswer(
        media_index=0,
        proto="RTP/AVP",
        audio=PayloadFormat(payload_type=0, codec=PCMU),
        telephone_event=PayloadFormat(payload_type=101, codec=TELEPHONE_EVENT, fmtp="0-16"),
        ptime=20,
        direction=Direction.SENDRECV,
        on_hold=False,
        remote_address="54.172.60.1",
        remote_port=14360,
        remote_rtcp_address="54.172.60.1",
        remote_rtcp_port=14361,
        rtcp_mux=False,
    )
    answer = build_answer(
        offer, audio, address="192.0.2.1", port=20000, session_id=42, session_version=1
    )
    assert (
        serialize_sdp(answer)
        == sdp("""\
v=0
o=- 42 1 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 20000 RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
""").encode()
    )
    assert parse_sdp(serialize_sdp(answer)) == answer


def test_offerer_preference_by_default() -> None:
    # Asterisk lists PCMU first; we prefer G722 but the offerer's order wins (RFC 3264 s6.1)
    offer = parse(ASTERISK_OFFER)
    assert negotiate_audio(offer, (G722, PCMA, PCMU)).audio.codec == PCMU
    ours_first = negotiate_audio(offer, (G722, PCMA, PCMU), prefer_offer_order=False)
    assert ours_first.audio == PayloadFormat(payload_type=9, codec=G722)
    # telephone-event not in our list: no DTMF payload type in the answer
    assert ours_first.telephone_event is None


def test_our_preference_falls_through_to_a_later_codec() -> None:
    offer = parse(TWILIO_OFFER)
    audio = negotiate_audio(offer, (OPUS, G722, PCMA, TELEPHONE_EVENT), prefer_offer_order=False)
    assert audio.audio.codec == PCMA


def test_opus_offer_keeps_dynamic_payload_type_and_fmtp() -> None:
    offer = parse(FREESWITCH_OFFER)
    audio = negotiate_audio(offer, (OPUS, PCMU, TELEPHONE_EVENT))
    assert audio.audio.payload_type == 102
    assert audio.audio.codec == OPUS
    assert audio.audio.fmtp is not None and "useinbandfec=1" in audio.audio.fmtp
    # only telephone-event/8000 is offered: used although opus runs at 48000
    assert audio.telephone_event == PayloadFormat(
        payload_type=101, codec=TELEPHONE_EVENT, fmtp="0-16"
    )
    # a=rtcp gives the RTCP address and port (RFC 3605)
    assert (audio.remote_rtcp_address, audio.remote_rtcp_port) == ("198.51.100.20", 24619)
    answer = build_answer(
        offer, audio, address="192.0.2.1", port=20000, session_id=1, session_version=1
    )
    assert answer.media[0].formats == ("102", "101")
    assert answer.media[0].attributes[:2] == (
        Attribute(name="rtpmap", value="102 opus/48000/2"),
        Attribute(name="fmtp", value="102 " + offer.media[0].fmtp["102"]),
    )


def test_baresip_offer_g722_and_fmtp_0_15() -> None:
    offer = parse(BARESIP_OFFER)
    audio = negotiate_audio(offer, OURS)
    assert audio.audio == PayloadFormat(payload_type=9, codec=G722)
    assert audio.telephone_event == PayloadFormat(
        payload_type=101, codec=TELEPHONE_EVENT, fmtp="0-15"
    )
    assert audio.ptime == 20


def test_webrtc_offer_is_not_acceptable_by_default_and_negotiates_when_allowed() -> None:
    offer = parse(WEBRTC_OFFER)
    assert "transport UDP/TLS/RTP/SAVPF not supported" in not_acceptable(offer, OURS)
    protos = ("UDP/TLS/RTP/SAVPF",)
    supported = (OPUS, PCMU, TELEPHONE_EVENT, TELEPHONE_EVENT_48K)
    audio = negotiate_audio(offer, supported, protos=protos, rtcp_mux=True)
    # telephone-event at the audio codec's clock rate (RFC 4733 s2.1)
    assert audio.audio == PayloadFormat(
        payload_type=111, codec=OPUS, fmtp="minptime=10;useinbandfec=1"
    )
    assert audio.telephone_event == PayloadFormat(payload_type=110, codec=TELEPHONE_EVENT_48K)
    assert audio.rtcp_mux
    assert (audio.remote_rtcp_address, audio.remote_rtcp_port) == ("0.0.0.0", 9)
    assert not audio.on_hold
    assert audio.direction is Direction.SENDRECV
    pcmu = negotiate_audio(offer, (PCMU, TELEPHONE_EVENT, TELEPHONE_EVENT_48K), protos=protos)
    assert pcmu.audio.payload_type == 0
    assert pcmu.telephone_event == PayloadFormat(payload_type=126, codec=TELEPHONE_EVENT)
    assert not pcmu.rtcp_mux
    # without mux the a=rtcp line still names the RTCP port
    assert pcmu.remote_rtcp_port == 9


def test_sdes_offer() -> None:
    offer = parse(SDES_OFFER)
    assert "transport RTP/SAVP not supported" in not_acceptable(offer, OURS)
    audio = negotiate_audio(offer, OURS, protos=("RTP/AVP", "rtp/savp"))
    assert audio.proto == "RTP/SAVP"
    assert [c.suite for c in audio.offered_crypto] == [
        "AES_CM_128_HMAC_SHA1_80",
        "AES_CM_128_HMAC_SHA1_32",
    ]
    with pytest.raises(ValueError, match="needs a crypto attribute"):
        build_answer(offer, audio, address="192.0.2.1", port=20000, session_id=1, session_version=1)
    ours = CryptoAttribute(
        tag=1,
        suite="AES_CM_128_HMAC_SHA1_80",
        keys=(CryptoKey(method="inline", info="QUJjZGVmMTIzNDU2Nzg5QUJDREUwMTIzNDU2Nzg5"),),
    )
    answer = build_answer(
        offer, audio, address="192.0.2.1", port=20000, session_id=1, session_version=1, crypto=ours
    )
    assert answer.media[0].proto == "RTP/SAVP"
    assert answer.media[0].crypto == (ours,)
    assert parse_sdp(serialize_sdp(answer)) == answer


@pytest.mark.parametrize(
    ("sample", "answer_direction", "on_hold"),
    [
        (ASTERISK_HOLD_OFFER, Direction.RECVONLY, True),
        (FREESWITCH_INACTIVE_OFFER, Direction.INACTIVE, True),
        (SESSION_SENDONLY_HOLD_OFFER, Direction.RECVONLY, True),
        # RFC 3264 s8.4: c=0.0.0.0 means do not send to it, so we only receive
        (CISCO_RFC2543_HOLD_OFFER, Direction.RECVONLY, True),
        (ASTERISK_OFFER, Direction.SENDRECV, False),
    ],
)
def test_hold_offers_mirror_direction(
    sample: str, answer_direction: Direction, on_hold: bool
) -> None:
    offer = parse(sample)
    audio = negotiate_audio(offer, OURS)
    assert audio.direction is answer_direction
    assert audio.on_hold is on_hold
    answer = build_answer(
        offer, audio, address="192.0.2.1", port=20000, session_id=1, session_version=2
    )
    assert answer.media[0].direction is answer_direction


@pytest.mark.parametrize(
    ("offered", "ours", "expected"),
    [
        ("sendrecv", Direction.SENDRECV, Direction.SENDRECV),
        ("sendonly", Direction.SENDRECV, Direction.RECVONLY),
        ("recvonly", Direction.SENDRECV, Direction.SENDONLY),
        ("inactive", Direction.SENDRECV, Direction.INACTIVE),
        ("sendrecv", Direction.SENDONLY, Direction.SENDONLY),
        ("sendonly", Direction.SENDONLY, Direction.INACTIVE),
        ("recvonly", Direction.INACTIVE, Direction.INACTIVE),
    ],
)
def test_direction_mirroring(offered: str, ours: Direction, expected: Direction) -> None:
    offer = parse_sdp(TWILIO_OFFER.replace("a=sendrecv", f"a={offered}"))
    audio = negotiate_audio(offer, OURS, direction=ours)
    assert audio.direction is expected
    assert audio.on_hold is (offered in ("sendonly", "inactive"))


def test_recvonly_with_null_address_is_inactive() -> None:
    offer = parse_sdp(CISCO_RFC2543_HOLD_OFFER.replace("a=ptime:20", "a=ptime:20\r\na=recvonly"))
    audio = negotiate_audio(offer, OURS)
    assert audio.direction is Direction.INACTIVE
    assert audio.remote_address == "0.0.0.0"


def test_no_common_codec_is_not_acceptable() -> None:
    offer = parse(TWILIO_OFFER)
    detail = not_acceptable(offer, (OPUS, G722, TELEPHONE_EVENT))
    assert "no common codec" in detail
    assert "PCMU/8000, PCMA/8000, telephone-event/8000" in detail
    # telephone-event alone is no audio codec
    assert "no common codec" in not_acceptable(offer, (TELEPHONE_EVENT,))
    assert "no common codec" in not_acceptable(offer, (OPUS,), prefer_offer_order=False)


def test_offer_of_only_unnamed_dynamic_types_is_not_acceptable() -> None:
    offer = parse_sdp(HEAD + "m=audio 4000 RTP/AVP 98\r\n")
    assert "offered none we can name" in not_acceptable(offer, OURS)


def test_no_audio_is_not_acceptable() -> None:
    assert not_acceptable(parse(T38_OFFER), OURS) == "no audio stream offered"
    assert not_acceptable(parse_sdp(HEAD), OURS) == "no audio stream offered"


def test_video_rejected_with_port_zero_in_order() -> None:
    offer = parse(LINPHONE_VIDEO_OFFER)
    audio = negotiate_audio(offer, OURS)
    assert audio.audio == PayloadFormat(payload_type=0, codec=PCMU)
    answer = build_answer(
        offer, audio, address="192.0.2.1", port=20000, session_id=5, session_version=5
    )
    assert [(m.media, m.port) for m in answer.media] == [("audio", 20000), ("video", 0)]
    assert answer.media[1].formats == ("96", "97")
    assert answer.media[1].attributes == ()
    # no ptime offered: none answered
    assert answer.media[0].ptime is None


def test_rfc3264_example_answer() -> None:
    offer = parse(RFC3264_OFFER)
    audio = negotiate_audio(offer, OURS)
    assert audio.remote_address == "host.atlanta.example.com"
    answer = build_answer(
        offer,
        audio,
        address="host.biloxi.example.com",
        port=49172,
        session_id=2890844730,
        session_version=2890844730,
        username="bob",
        session_name="call",
    )
    assert (
        serialize_sdp(answer)
        == sdp("""\
v=0
o=bob 2890844730 2890844730 IN IP4 host.biloxi.example.com
s=call
c=IN IP4 host.biloxi.example.com
t=0 0
m=audio 49172 RTP/AVP 0
a=rtpmap:0 PCMU/8000
a=sendrecv
m=video 0 RTP/AVP 31 32
""").encode()
    )


def test_port_zero_stream_stays_rejected_and_later_audio_is_used() -> None:
    # An offer whose first audio stream was disabled earlier in the session (RFC 3264 s8.2)
    offer = parse_sdp(
        HEAD
        + "m=audio 0 RTP/AVP 0\r\n"
        + "m=audio 4002 RTP/AVP 8\r\n"
        + "m=audio 4004 RTP/AVP 0\r\n"
    )
    audio = negotiate_audio(offer, OURS)
    assert audio.media_index == 1
    answer = build_answer(
        offer, audio, address="192.0.2.1", port=20000, session_id=1, session_version=1
    )
    assert [m.port for m in answer.media] == [0, 20000, 0]


def test_first_audio_without_common_codec_is_skipped() -> None:
    offer = parse_sdp(HEAD + "m=audio 4000 RTP/AVP 18\r\n" + "m=audio 4002 RTP/AVP 8\r\n")
    assert negotiate_audio(offer, OURS).media_index == 1
    detail = not_acceptable(parse_sdp(HEAD + "m=audio 0 RTP/AVP 0\r\n"), OURS)
    assert detail == "no audio stream offered"


def test_ipv6_offer_and_answer() -> None:
    offer = parse(LINPHONE_IPV6_OFFER)
    audio = negotiate_audio(offer, OURS)
    assert audio.audio == PayloadFormat(payload_type=8, codec=PCMA)
    assert (audio.remote_address, audio.remote_port) == ("2001:db8::10", 7078)
    answer = build_answer(
        offer, audio, address="2001:db8::1", port=20000, session_id=1, session_version=1
    )
    assert answer.origin.addr_type == "IP6"
    assert answer.connection == Connection(addr_type="IP6", address="2001:db8::1")
    assert b"c=IN IP6 2001:db8::1\r\n" in serialize_sdp(answer)


def test_answer_copies_offer_timing() -> None:
    offer = parse(RFC4566_FULL)
    audio = negotiate_audio(offer, OURS)
    answer = build_answer(
        offer, audio, address="192.0.2.1", port=1, session_id=1, session_version=1
    )
    # RFC 3264 s6: the t= line in the answer MUST equal that of the offer
    assert answer.timing == offer.timing
    # the session-level recvonly applies to the audio: we answer sendonly
    assert audio.direction is Direction.SENDONLY


def test_negotiate_hand_built_offer_without_connection_is_malformed() -> None:
    offer = SessionDescription(
        origin=Origin(username="-", session_id=1, session_version=1, address="192.0.2.1"),
        media=(MediaDescription(media="audio", port=4000, proto="RTP/AVP", formats=("0",)),),
    )
    with pytest.raises(SdpError) as info:
        negotiate_audio(offer, OURS)
    assert info.value.kind is SdpErrorKind.MALFORMED


def test_build_answer_refuses_bad_arguments() -> None:
    offer = parse(TWILIO_OFFER)
    audio = negotiate_audio(offer, OURS)
    common = {"address": "192.0.2.1", "session_id": 1, "session_version": 1}
    with pytest.raises(ValueError, match="port"):
        build_answer(offer, audio, port=70000, **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="media index"):
        build_answer(offer, dataclasses.replace(audio, media_index=1), port=1, **common)  # type: ignore[arg-type]


def test_answer_with_mux_and_no_telephone_event() -> None:
    offer = parse_sdp(TWILIO_OFFER.replace("a=sendrecv", "a=sendrecv\r\na=rtcp-mux"))
    audio = negotiate_audio(offer, (PCMA,), rtcp_mux=True)
    assert audio.rtcp_mux
    assert (audio.remote_rtcp_address, audio.remote_rtcp_port) == ("54.172.60.1", 14360)
    answer = build_answer(
        offer, audio, address="192.0.2.1", port=20000, session_id=1, session_version=1
    )
    assert answer.media[0].formats == ("8",)
    assert answer.media[0].rtcp_mux
    assert answer.media[0].attribute_values("rtpmap") == ("8 PCMA/8000",)


def test_rtcp_attribute_without_address_uses_rtp_address() -> None:
    offer = parse_sdp(TWILIO_OFFER.replace("a=sendrecv", "a=sendrecv\r\na=rtcp:15000"))
    audio = negotiate_audio(offer, OURS)
    assert (audio.remote_rtcp_address, audio.remote_rtcp_port) == ("54.172.60.1", 15000)


# -- building offers ------------------------------------------------------------------------------


def test_make_offer() -> None:
    offer = make_offer(
        (OPUS, G722, PCMU, PCMA, TELEPHONE_EVENT),
        address="192.0.2.1",
        port=20000,
        session_id=3,
        session_version=4,
        username="sipbridge",
        session_name="call",
    )
    assert (
        serialize_sdp(offer)
        == sdp("""\
v=0
o=sipbridge 3 4 IN IP4 192.0.2.1
s=call
c=IN IP4 192.0.2.1
t=0 0
m=audio 20000 RTP/AVP 96 9 0 8 101
a=rtpmap:96 opus/48000/2
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
""").encode()
    )
    assert parse_sdp(serialize_sdp(offer)) == offer


def test_make_offer_hold_srtp_and_options() -> None:
    crypto = CryptoAttribute(
        tag=1,
        suite="AES_CM_128_HMAC_SHA1_80",
        keys=(CryptoKey(method="inline", info="QUJjZGVmMTIzNDU2Nzg5QUJDREUwMTIzNDU2Nzg5"),),
    )
    offer = make_offer(
        (PCMU, OPUS),
        address="2001:db8::1",
        port=30000,
        session_id=1,
        session_version=2,
        ptime=None,
        direction=Direction.SENDONLY,
        proto="RTP/SAVP",
        fmtp={Codec(name="OPUS", clock_rate=48000, channels=2): "useinbandfec=1"},
        crypto=(crypto,),
        rtcp_mux=True,
    )
    (audio,) = offer.media
    assert audio.proto == "RTP/SAVP"
    assert audio.formats == ("0", "96")
    assert audio.fmtp == {"96": "useinbandfec=1"}
    assert audio.ptime is None
    assert audio.crypto == (crypto,)
    assert audio.rtcp_mux
    assert audio.direction is Direction.SENDONLY
    assert offer.origin.addr_type == "IP6"
    assert parse_sdp(serialize_sdp(offer)) == offer


def test_make_offer_payload_type_allocation() -> None:
    dynamic = [Codec(name=f"X{i}", clock_rate=8000) for i in range(6)]
    # six dynamic codecs take 96-101, so telephone-event moves on to 102
    offer = make_offer(
        (*dynamic, TELEPHONE_EVENT),
        address="192.0.2.1",
        port=1,
        session_id=1,
        session_version=1,
        fmtp={},
    )
    assert offer.media[0].formats == ("96", "97", "98", "99", "100", "101", "102")
    assert offer.media[0].fmtp == {}
    # telephone-event first takes 101 and the others go around it
    first = make_offer(
        (TELEPHONE_EVENT, *dynamic), address="192.0.2.1", port=1, session_id=1, session_version=1
    )
    assert first.media[0].formats == ("101", "96", "97", "98", "99", "100", "102")
    too_many = [Codec(name=f"X{i}", clock_rate=8000) for i in range(33)]
    with pytest.raises(ValueError, match="dynamic payload types"):
        make_offer(too_many, address="192.0.2.1", port=1, session_id=1, session_version=1)


@pytest.mark.parametrize(
    ("codecs", "port", "message"),
    [
        ((), 1, "at least one codec"),
        ((PCMU, Codec(name="pcmu", clock_rate=8000)), 1, "listed twice"),
        ((PCMU,), -1, "port"),
    ],
)
def test_make_offer_refuses(codecs: tuple[Codec, ...], port: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_offer(codecs, address="192.0.2.1", port=port, session_id=1, session_version=1)


def test_our_offer_answered_by_our_negotiator() -> None:
    offer = make_offer(
        (PCMA, PCMU, TELEPHONE_EVENT),
        address="192.0.2.1",
        port=4000,
        session_id=1,
        session_version=1,
    )
    audio = negotiate_audio(parse_sdp(serialize_sdp(offer)), (PCMU, PCMA, TELEPHONE_EVENT))
    assert audio.audio.codec == PCMA
    assert audio.telephone_event == PayloadFormat(
        payload_type=101, codec=TELEPHONE_EVENT, fmtp="0-16"
    )


# -- property tests -------------------------------------------------------------------------------

TOKEN_CHARS = "!#$%&'*+-.0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ^_`abcdefghijklmnopqrstuvwxyz{|}~"
KNOWN = {"rtpmap", "fmtp", "ptime", "maxptime", "rtcp", "crypto", *(d.value for d in Direction)}

tokens = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=12)
# non-ws-string = 1*(VCHAR/%x80-FF): anything visible, and any non-ASCII text
non_ws = st.text(
    alphabet=st.characters(min_codepoint=0x21, codec="utf-8", exclude_characters="\x7f"),
    min_size=1,
    max_size=16,
)
texts = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\0"), max_size=24)
numbers = st.integers(min_value=0, max_value=10**18)
typed_times = st.builds(
    lambda n, unit: f"{n}{unit}", st.integers(0, 10**9), st.sampled_from(["", "d", "h", "m", "s"])
)
connections = st.builds(Connection, address=non_ws, net_type=tokens, addr_type=tokens)
bandwidths = st.builds(Bandwidth, type=tokens, value=numbers)
plain_attributes = st.builds(
    Attribute, name=tokens.filter(lambda n: n not in KNOWN), value=st.none() | texts
)
codecs = st.builds(
    Codec,
    name=tokens.filter(lambda n: "/" not in n),
    clock_rate=st.integers(1, 10**6),
    channels=st.integers(1, 8),
)
keys = st.sampled_from(["prompt", "clear:secret", "base64:QUJj", "uri:http://example.com/k"])
RTP_PROTOS = ["RTP/AVP", "RTP/SAVP", "RTP/AVPF", "UDP/TLS/RTP/SAVPF", "rtp/avp"]
OTHER_PROTOS = ["udptl", "UDP/DTLS/SCTP", "TCP/MSRP", "UDP/BFCP"]


@st.composite
def media_descriptions(draw: st.DrawFn, *, needs_connection: bool) -> MediaDescription:
    proto = draw(st.sampled_from(RTP_PROTOS + OTHER_PROTOS))
    attributes = draw(st.lists(plain_attributes, max_size=4))
    if proto in RTP_PROTOS:
        pts = draw(st.lists(st.integers(0, 127), min_size=1, max_size=6, unique=True))
        formats = tuple(str(pt) for pt in pts)
        for pt in pts:
            if pt >= 96 or draw(st.booleans()):
                attributes.append(Attribute(name="rtpmap", value=format_rtpmap(pt, draw(codecs))))
            if draw(st.booleans()):
                attributes.append(Attribute(name="fmtp", value=format_fmtp(str(pt), "0-16")))
        if draw(st.booleans()):
            attributes.append(Attribute(name="ptime", value=str(draw(st.integers(10, 120)))))
        if draw(st.booleans()):
            rtcp = RtcpAttribute(port=draw(st.integers(0, 65535)))
            attributes.append(Attribute(name="rtcp", value=format_rtcp(rtcp)))
    else:
        formats = tuple(draw(st.lists(tokens, min_size=1, max_size=4)))
    if draw(st.booleans()):
        attributes.append(Attribute(name=draw(st.sampled_from(list(Direction))).value))
    attributes = draw(st.permutations(attributes))
    connection = draw(connections) if needs_connection else draw(st.none() | connections)
    return MediaDescription(
        media=draw(st.sampled_from(["audio", "video", "image", "application", "text"])),
        port=draw(st.integers(0, 65535)),
        port_count=draw(st.none() | st.integers(1, 100)),
        proto=proto,
        formats=formats,
        title=draw(st.none() | texts),
        connection=connection,
        bandwidths=tuple(draw(st.lists(bandwidths, max_size=2))),
        key=draw(st.none() | keys),
        attributes=tuple(attributes),
    )


@st.composite
def session_descriptions(draw: st.DrawFn) -> SessionDescription:
    connection = draw(st.none() | connections)
    media = draw(st.lists(media_descriptions(needs_connection=connection is None), max_size=4))
    timing = draw(
        st.lists(
            st.builds(
                Timing,
                start=numbers,
                stop=numbers,
                repeats=st.lists(
                    st.lists(typed_times, min_size=3, max_size=5).map(" ".join), max_size=2
                ).map(tuple),
            ),
            min_size=1,
            max_size=3,
        )
    )
    session_attributes = draw(st.lists(plain_attributes, max_size=4))
    if draw(st.booleans()):
        session_attributes.append(Attribute(name=draw(st.sampled_from(list(Direction))).value))
    return SessionDescription(
        origin=Origin(
            username=draw(non_ws),
            session_id=draw(st.integers(0, 10**39)),
            session_version=draw(numbers),
            net_type=draw(tokens),
            addr_type=draw(tokens),
            address=draw(non_ws),
        ),
        session_name=draw(texts),
        information=draw(st.none() | texts),
        uri=draw(st.none() | texts),
        emails=tuple(draw(st.lists(texts, max_size=2))),
        phones=tuple(draw(st.lists(texts, max_size=2))),
        connection=connection,
        bandwidths=tuple(draw(st.lists(bandwidths, max_size=2))),
        timing=tuple(timing),
        time_zones=draw(st.none() | st.just("2882844526 -1h 2898848070 0")),
        key=draw(st.none() | keys),
        attributes=tuple(session_attributes),
        media=tuple(media),
    )


@fuzz
@given(session_descriptions())
def test_serialise_then_parse_round_trips(sd: SessionDescription) -> None:
    data = serialize_sdp(sd)
    assert parse_sdp(data) == sd
    assert serialize_sdp(parse_sdp(data)) == data


@fuzz
@given(st.text(max_size=400) | st.binary(max_size=400))
def test_arbitrary_input_parses_or_raises_malformed(data: str | bytes) -> None:
    try:
        sd = parse_sdp(data)
    except SdpError as error:
        assert error.kind is SdpErrorKind.MALFORMED
    else:
        assert parse_sdp(serialize_sdp(sd)) == sd


@st.composite
def mutated_samples(draw: st.DrawFn) -> bytes:
    """A real sample with a few bytes deleted, replaced or inserted, or lines shuffled."""
    data = bytearray(SAMPLES[draw(st.sampled_from(sorted(SAMPLES)))].encode())
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "replace", "insert", "lines"]))
        at = draw(st.integers(0, len(data) - 1))
        if kind == "delete":
            del data[at]
        elif kind == "replace":
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from([b" ", b"\r\n", b"\n", b"=", b":", b"/", b"0"]))
        else:
            lines = bytes(data).split(b"\r\n")
            data = bytearray(b"\r\n".join(draw(st.permutations(lines))))
    return bytes(data)


@fuzz
@given(mutated_samples())
def test_mutated_samples_parse_or_raise_malformed(data: bytes) -> None:
    try:
        sd = parse_sdp(data)
    except SdpError as error:
        assert error.kind is SdpErrorKind.MALFORMED
        return
    assert parse_sdp(serialize_sdp(sd)) == sd
    # whatever parses can be negotiated: an answer or an SdpError, never a crash
    try:
        audio = negotiate_audio(sd, (*OURS, OPUS), protos=RTP_PROTOS)
    except SdpError as error:
        assert error.kind in (SdpErrorKind.MALFORMED, SdpErrorKind.NOT_ACCEPTABLE)
    else:
        assert isinstance(audio, AudioAnswer)


@fuzz
@given(session_descriptions(), st.booleans(), st.sampled_from(list(Direction)))
def test_negotiation_invariants(
    offer: SessionDescription, prefer_offer_order: bool, ours: Direction
) -> None:
    supported = (PCMU, PCMA, G722, OPUS, TELEPHONE_EVENT)
    try:
        audio = negotiate_audio(
            offer,
            supported,
            prefer_offer_order=prefer_offer_order,
            protos=RTP_PROTOS,
            direction=ours,
        )
    except SdpError as error:
        assert error.kind is SdpErrorKind.NOT_ACCEPTABLE
        return
    offered = offer.media[audio.media_index]
    assert offered.media == "audio"
    assert not offered.is_rejected
    assert audio.audio in offered.payload_formats
    assert any(audio.audio.codec.matches(c) for c in supported)
    assert audio.direction.intersect(ours) is audio.direction
    crypto = CryptoAttribute(tag=1, suite="X", keys=(CryptoKey(method="inline", info="QUJj"),))
    answer = build_answer(
        offer,
        audio,
        address="192.0.2.1",
        port=20000,
        session_id=1,
        session_version=1,
        crypto=crypto,
    )
    # RFC 3264 s6: one answer m-line per offer m-line, same order, others rejected
    assert [m.media for m in answer.media] == [m.media for m in offer.media]
    assert [m.port != 0 for m in answer.media] == [
        i == audio.media_index for i in range(len(offer.media))
    ]
    assert answer.timing == offer.timing
    assert parse_sdp(serialize_sdp(answer)) == answer


def test_lines_parsed_before_are_reused_bounded_and_never_a_bad_one() -> None:
    """Attribute, c= and rtpmap lines are kept as parsed (a trunk repeats them on every call):
    the same frozen value again, a malformed line refused every time (never kept), and each
    cache emptied when full, so that a peer sending ever new lines holds a bounded amount."""
    offer = (
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        "a=sendrecv\r\nm=audio 4000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
    )
    first, second = parse_sdp(offer), parse_sdp(offer.replace("4000", "4002"))
    assert first.media[0].attributes[0] is second.media[0].attributes[0]
    assert first.attributes[0] is second.attributes[0]
    assert first.connection is second.connection
    assert (
        first.media[0].rtpmap
        == second.media[0].rtpmap
        == {
            0: Codec(name="PCMU", clock_rate=8000),
            101: Codec(name="telephone-event", clock_rate=8000),
        }
    )
    bad = offer.replace("PCMU/8000", "PCMU/0")
    for _ in range(2):
        with pytest.raises(SdpError):
            parse_sdp(bad)
    assert "0 PCMU/0" not in syntax._MEDIA_ATTRIBUTES
    assert "0 PCMU/0" not in description._RTPMAPS
    for n in range(syntax.MAX_CACHED + 1):
        syntax._parse_attribute(f"x-{n}", media_level=True)
        syntax._parse_attribute(f"x-{n}", media_level=False)
        syntax._parse_connection(f"IN IP4 192.0.2.{n}")
        parse_rtpmap(f"96 x{n}/8000")
    for cache in (
        syntax._MEDIA_ATTRIBUTES,
        syntax._SESSION_ATTRIBUTES,
        syntax._CONNECTIONS,
        description._RTPMAPS,
    ):
        assert 0 < len(cache) <= syntax.MAX_CACHED
