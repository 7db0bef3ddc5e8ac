"""SDP, sans-IO: RFC 4566 descriptions and RFC 3264 offer/answer for one audio stream.

Bytes in, frozen dataclasses out, and back. Nothing here reads a clock or draws random numbers;
session ids and versions for `o=` come from the caller.

- `description`: the data model and the grammars of the attributes we act on (rtpmap, fmtp,
  ptime, rtcp, crypto);
- `syntax`: `parse_sdp` and `serialize_sdp`, with limits on size, lines, media and formats;
- `offer_answer`: `negotiate_audio`, `build_answer`, `make_offer`;
- `errors`: `SdpError`, the only exception this package raises for input it refuses.

Where it sits (checked by `tests/test_layers.py`): `sdp/` is pure data about sessions and knows
neither the signalling that carries it nor the media it describes. It imports nothing of
`sipbridge` outside itself - not `sip/`, not `media/`, not `server/` - and raises `SdpError`,
never a SIP status: the SIP server turns a refused offer or answer into 488 Not Acceptable Here.
Above it, `telephony/` maps SDP codecs and SDES lines to what `media/` implements, and
`server/` drives both.
"""

from sipbridge.sdp.description import (
    G722,
    OPUS,
    PCMA,
    PCMU,
    STATIC_PAYLOAD_TYPES,
    TELEPHONE_EVENT,
    Attribute,
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
    SessionDescription,
    Timing,
    format_crypto,
    format_fmtp,
    format_rtcp,
    format_rtpmap,
    parse_crypto,
    parse_fmtp,
    parse_ptime,
    parse_rtcp,
    parse_rtpmap,
)
from sipbridge.sdp.errors import SdpError, SdpErrorKind
from sipbridge.sdp.offer_answer import AudioAnswer, build_answer, make_offer, negotiate_audio
from sipbridge.sdp.syntax import (
    MAX_FORMATS,
    MAX_MEDIA,
    MAX_SDP_BYTES,
    MAX_SDP_LINES,
    parse_sdp,
    serialize_sdp,
)

__all__ = [
    "G722",
    "MAX_FORMATS",
    "MAX_MEDIA",
    "MAX_SDP_BYTES",
    "MAX_SDP_LINES",
    "OPUS",
    "PCMA",
    "PCMU",
    "STATIC_PAYLOAD_TYPES",
    "TELEPHONE_EVENT",
    "Attribute",
    "AudioAnswer",
    "Bandwidth",
    "Codec",
    "Connection",
    "CryptoAttribute",
    "CryptoKey",
    "Direction",
    "MediaDescription",
    "Origin",
    "PayloadFormat",
    "RtcpAttribute",
    "SdpError",
    "SdpErrorKind",
    "SessionDescription",
    "Timing",
    "build_answer",
    "format_crypto",
    "format_fmtp",
    "format_rtcp",
    "format_rtpmap",
    "make_offer",
    "negotiate_audio",
    "parse_crypto",
    "parse_fmtp",
    "parse_ptime",
    "parse_rtcp",
    "parse_rtpmap",
    "parse_sdp",
    "serialize_sdp",
]
