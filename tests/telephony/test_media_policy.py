"""Media policy of a call: codecs, encryption and media timeout from trunk and rule."""

from __future__ import annotations

import pytest
from google.protobuf.duration_pb2 import Duration
from livekit.protocol import sip as proto

from sipbridge import sdp
from sipbridge.media.codecs import G722_SPEC, OPUS_SPEC, PCMA_SPEC, PCMU_SPEC, SPECS, CodecSpec
from sipbridge.telephony.media import (
    DEFAULT_CODECS,
    IMPLEMENTED,
    PLAIN,
    SECURE,
    MediaPolicy,
    codec_from_config,
    media_policy,
    sdp_codec,
    spec_for,
)

Enc = proto.SIPMediaEncryption


def test_defaults_follow_the_offer_with_every_codec_and_no_encryption() -> None:
    policy = media_policy(None, None)
    assert policy == MediaPolicy()
    assert policy.codecs == DEFAULT_CODECS
    assert not policy.prefer_ours
    assert policy.protos == PLAIN
    assert policy.media_timeout == 0.0


def test_codec_names_and_rates() -> None:
    assert codec_from_config("PCMU", 8000) == sdp.PCMU
    assert codec_from_config("pcma", 0) == sdp.PCMA
    assert codec_from_config("G722", 16000) == sdp.G722
    assert codec_from_config("g722", 8000) == sdp.G722
    assert codec_from_config("opus", 48000) == sdp.OPUS
    assert codec_from_config("opus", 16000) is None
    assert codec_from_config("PCMU", 16000) is None
    assert codec_from_config("G729", 8000) is None


def test_listed_codecs_come_first_and_only_listed_restricts() -> None:
    trunk = proto.SIPInboundTrunkInfo(
        media=proto.SIPMediaConfig(
            codecs=[proto.SIPCodec(name="G722", rate=16000), proto.SIPCodec(name="G729")]
        )
    )
    policy = media_policy(trunk, None)
    assert policy.prefer_ours
    assert policy.codecs == (sdp.G722, sdp.PCMU, sdp.PCMA, sdp.OPUS)
    rule = proto.SIPDispatchRuleInfo(
        media=proto.SIPMediaConfig(
            only_listed_codecs=True,
            codecs=[proto.SIPCodec(name="PCMA"), proto.SIPCodec(name="pcma", rate=8000)],
        )
    )
    assert media_policy(trunk, rule).codecs == (sdp.PCMA,)


def test_encryption_from_deprecated_field_then_media_the_rule_winning() -> None:
    trunk = proto.SIPInboundTrunkInfo(media_encryption=Enc.SIP_MEDIA_ENCRYPT_ALLOW)
    assert media_policy(trunk).protos == SECURE + PLAIN
    trunk.media.encryption = Enc.SIP_MEDIA_ENCRYPT_REQUIRE
    assert media_policy(trunk).protos == SECURE
    rule = proto.SIPDispatchRuleInfo(
        media=proto.SIPMediaConfig(encryption=Enc.SIP_MEDIA_ENCRYPT_DISABLE)
    )
    assert media_policy(trunk, rule).protos == PLAIN
    # a rule with media but no encryption set keeps the trunk's
    rule = proto.SIPDispatchRuleInfo(media=proto.SIPMediaConfig(only_listed_codecs=False))
    assert media_policy(trunk, rule).protos == SECURE


def test_media_timeout() -> None:
    trunk = proto.SIPInboundTrunkInfo(
        media=proto.SIPMediaConfig(media_timeout=Duration(seconds=5, nanos=500_000_000))
    )
    assert media_policy(trunk).media_timeout == 5.5


# -- SDP codecs <-> media codec specs ----------------------------------------------------------


def test_specs_describe_the_sdp_codecs() -> None:
    assert [spec.name for spec in SPECS] == ["PCMU", "PCMA", "G722", "opus"]
    assert [sdp_codec(spec) for spec in SPECS] == [sdp.PCMU, sdp.PCMA, sdp.G722, sdp.OPUS]
    # every codec the media path implements has an SDP name, and the defaults are those
    assert [spec for _, spec in IMPLEMENTED] == list(SPECS)
    assert [codec for codec, _ in IMPLEMENTED] == list(DEFAULT_CODECS)
    assert all(spec_for(sdp_codec(spec)) is spec for spec in SPECS)
    with pytest.raises(ValueError, match="no SDP name"):
        sdp_codec(CodecSpec(name="GSM", sample_rate=8000, rtp_clock=8000))


@pytest.mark.parametrize(
    ("rtpmap", "expected"),
    [
        (sdp.Codec(name="PCMU", clock_rate=8000), PCMU_SPEC),
        (sdp.Codec(name="pcmu", clock_rate=8000), PCMU_SPEC),
        (sdp.Codec(name="pcma", clock_rate=8000), PCMA_SPEC),
        (sdp.Codec(name="g722", clock_rate=8000), G722_SPEC),
        (sdp.Codec(name="OPUS", clock_rate=48000, channels=2), OPUS_SPEC),
        (sdp.STATIC_PAYLOAD_TYPES[9], G722_SPEC),
        # G.722 is always /8000 in SDP; a /16000 rtpmap is not the same payload format
        (sdp.Codec(name="G722", clock_rate=16000), None),
        # RFC 7587 s7: opus is always /48000/2
        (sdp.Codec(name="opus", clock_rate=48000), None),
        (sdp.Codec(name="PCMU", clock_rate=16000), None),
        (sdp.TELEPHONE_EVENT, None),
        (sdp.STATIC_PAYLOAD_TYPES[3], None),  # GSM
    ],
)
def test_spec_for(rtpmap: sdp.Codec, expected: CodecSpec | None) -> None:
    assert spec_for(rtpmap) == expected
