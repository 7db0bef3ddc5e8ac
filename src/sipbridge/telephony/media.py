"""What media a call may use: codecs, encryption and media timeout from its trunk and rule.

`SIPMediaConfig` sits on inbound trunks and dispatch rules (and on outbound trunks and requests).
The rule's, being the more specific, wins over the trunk's; the deprecated `media_encryption`
fields count when `media.encryption` is unset. Listed codecs are preferred in their order and,
with `only_listed_codecs`, are the only ones allowed; without a list the offerer's order wins
(RFC 3264 s6.1) among our defaults.

The codecs are named as SDP names them (`sdp.Codec`); `spec_for` and `sdp_codec` map between
that and the `CodecSpec` the media path runs, so that `media/` needs no SDP and `sdp/` no media.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from livekit.protocol import sip as proto

from sipbridge import sdp
from sipbridge.media.codecs import G722_SPEC, OPUS_SPEC, PCMA_SPEC, PCMU_SPEC, CodecSpec

# Every codec the media path implements, as SDP names it: RFC 3551 s6 for the static three
# (G.722's RTP clock is 8000 although it samples at 16 kHz, s4.5.2), RFC 7587 s7 for
# "opus/48000/2" whatever is sent.
IMPLEMENTED: tuple[tuple[sdp.Codec, CodecSpec], ...] = (
    (sdp.PCMU, PCMU_SPEC),
    (sdp.PCMA, PCMA_SPEC),
    (sdp.G722, G722_SPEC),
    (sdp.OPUS, OPUS_SPEC),
)
# Ours by default: the reference's three plus Opus (DESIGN.md, beyond the reference).
DEFAULT_CODECS = (sdp.PCMU, sdp.PCMA, sdp.G722, sdp.OPUS)
Encryption = proto.SIPMediaEncryption
PLAIN = ("RTP/AVP",)
SECURE = ("RTP/SAVP",)
# The enum's values read once: each `Encryption.X` goes through protobuf's enum wrapper
# (`__getattr__`), and `protos` is read several times per call set up.
_REQUIRE = Encryption.SIP_MEDIA_ENCRYPT_REQUIRE
_ALLOW = Encryption.SIP_MEDIA_ENCRYPT_ALLOW
_DISABLE = Encryption.SIP_MEDIA_ENCRYPT_DISABLE


class HasMedia(Protocol):
    """A trunk, rule or request carrying `media` and the deprecated `media_encryption`."""

    @property
    def media(self) -> proto.SIPMediaConfig: ...

    @property
    def media_encryption(self) -> int: ...

    def HasField(self, field_name: str) -> bool: ...


# Dataclasses made for every call write their own `__init__` (`init=False`): mypyc compiles
# it, where the one the dataclasses module generates stays interpreted (issue 18).
@dataclass(init=False, frozen=True, slots=True, kw_only=True)
class MediaPolicy:
    codecs: tuple[sdp.Codec, ...] = DEFAULT_CODECS
    prefer_ours: bool = False
    encryption: int = _DISABLE
    media_timeout: float = 0.0  # 0: the server's default

    def __init__(
        self,
        *,
        codecs: tuple[sdp.Codec, ...] = DEFAULT_CODECS,
        prefer_ours: bool = False,
        encryption: int = _DISABLE,
        media_timeout: float = 0.0,
    ) -> None:
        object.__setattr__(self, "codecs", codecs)
        object.__setattr__(self, "prefer_ours", prefer_ours)
        object.__setattr__(self, "encryption", encryption)
        object.__setattr__(self, "media_timeout", media_timeout)

    @property
    def protos(self) -> tuple[str, ...]:
        """The RTP profiles we may answer on."""
        if self.encryption == _REQUIRE:
            return SECURE
        if self.encryption == _ALLOW:
            return SECURE + PLAIN
        return PLAIN


def spec_for(codec: sdp.Codec) -> CodecSpec | None:
    """The codec we implement for an SDP rtpmap entry, or None (name compared case-insensitively,
    clock rate and channels exactly: G.722 is "G722/8000", Opus "opus/48000/2")."""
    return next((spec for known, spec in IMPLEMENTED if known.matches(codec)), None)


def sdp_codec(spec: CodecSpec) -> sdp.Codec:
    """How SDP names a codec we implement (what we offer and answer for it)."""
    found = next((codec for codec, known in IMPLEMENTED if known == spec), None)
    if found is None:
        raise ValueError(f"codec {spec.name} has no SDP name here")
    return found


def codec_from_config(name: str, rate: int) -> sdp.Codec | None:
    """A `SIPCodec{name, rate}` as an SDP codec; None for one we do not implement.

    G.722 is named with its 16 kHz sampling rate or its 8000 RTP clock; Opus with 48000.
    """
    key = name.strip().lower()
    if key in ("pcmu", "g711u", "ulaw") and rate in (0, 8000):
        return sdp.PCMU
    if key in ("pcma", "g711a", "alaw") and rate in (0, 8000):
        return sdp.PCMA
    if key == "g722" and rate in (0, 8000, 16000):
        return sdp.G722
    if key == "opus" and rate in (0, 48000):
        return sdp.OPUS
    return None


def _configured(holder: HasMedia | None) -> proto.SIPMediaConfig | None:
    if holder is None or not holder.HasField("media"):
        return None
    return holder.media


def media_policy(*holders: HasMedia | None) -> MediaPolicy:
    """The policy of a call, from the most general holder (trunk) to the most specific (rule)."""
    codecs: tuple[sdp.Codec, ...] = DEFAULT_CODECS
    prefer_ours = False
    encryption: int = _DISABLE
    timeout = 0.0
    for holder in holders:
        if holder is None:
            continue
        if holder.media_encryption:
            encryption = holder.media_encryption
        media = _configured(holder)
        if media is None:
            continue
        if media.HasField("encryption"):
            encryption = media.encryption
        if media.HasField("media_timeout"):
            timeout = media.media_timeout.seconds + media.media_timeout.nanos / 1e9
        listed = _listed(media.codecs)
        if listed:
            rest = () if media.only_listed_codecs else DEFAULT_CODECS
            codecs = listed + tuple(c for c in rest if not any(c.matches(x) for x in listed))
            prefer_ours = True
    return MediaPolicy(
        codecs=codecs, prefer_ours=prefer_ours, encryption=encryption, media_timeout=timeout
    )


def _listed(codecs: Sequence[proto.SIPCodec]) -> tuple[sdp.Codec, ...]:
    found: list[sdp.Codec] = []
    for item in codecs:
        codec = codec_from_config(item.name, item.rate)
        if codec is not None and not any(codec.matches(c) for c in found):
            found.append(codec)
    return tuple(found)
