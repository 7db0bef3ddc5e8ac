"""SDES (RFC 4568) between SDP and SRTP: `a=crypto` lines as keys, and SDES offer/answer.

The lines come from `sdp/`, the keys and contexts from `media/srtp.py`; `telephony/sdes.py`
pairs them. Each test reads real-looking lines through the SDP grammar first.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge import sdp
from sipbridge.media.errors import MediaError
from sipbridge.media.srtp import SUITES, SrtpContext, SrtpKeys
from sipbridge.telephony.sdes import (
    accept_answer,
    answer_crypto,
    choose_crypto,
    keys_from_crypto,
    offer_crypto,
)
from tests.media.test_srtp import counting_random, rtp_packet

FUZZ = settings(max_examples=300, database=None, deadline=None)


# --- keys in SDP (RFC 4568) --------------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITES)
def test_keys_round_trip_through_sdp(suite: str) -> None:
    keys = SrtpKeys.generate(suite, counting_random(5))
    (line,) = offer_crypto([keys])
    value = sdp.format_crypto(line)
    assert value == f"1 {suite} inline:{keys.inline()}"
    parsed = sdp.parse_crypto(value)
    assert parsed == line
    assert keys_from_crypto(parsed) == keys
    assert base64.b64decode(keys.inline()) == keys.master_key + keys.master_salt


# RFC 4568 s4's example line: key||salt, lifetime 2^20, MKI 1 of 32 octets
RFC_4568_LINE = (
    "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32"
)
RFC_4568_KEY = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR"


def crypto(value: str) -> sdp.CryptoAttribute:
    return sdp.parse_crypto(value)


def test_rfc_4568_key_without_mki_is_accepted() -> None:
    line = crypto(f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_4568_KEY}|2^20")
    keys = keys_from_crypto(line)
    material = base64.b64decode(RFC_4568_KEY)
    assert (keys.master_key, keys.master_salt) == (material[:16], material[16:])
    assert choose_crypto([line]) is line


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param(RFC_4568_LINE, "MKI", id="mki"),
        pytest.param(f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_4568_KEY}|1:4", "MKI", id="mki-only"),
        pytest.param(
            f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_4568_KEY}|2^20|1:4;"
            f"inline:{RFC_4568_KEY}|2^20|2:4",
            "2 keys",
            id="two-keys",
        ),
        pytest.param(f"1 F8_128_HMAC_SHA1_80 inline:{RFC_4568_KEY}", "not supported", id="f8"),
        pytest.param(
            f"1 AES_256_CM_HMAC_SHA1_80 inline:{RFC_4568_KEY}{RFC_4568_KEY}",
            "not supported",
            id="aes-256-cm",
        ),
        pytest.param(f"1 AES_CM_128_HMAC_SHA1_80 uri:{RFC_4568_KEY}", "not inline", id="uri-key"),
        pytest.param(
            f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_4568_KEY[:-4]}", "27 bytes", id="short-key"
        ),
        pytest.param(
            f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_4568_KEY}AAAA", "33 bytes", id="long-key"
        ),
        pytest.param(
            f"1 AEAD_AES_128_GCM inline:{RFC_4568_KEY}", "30 bytes, not 28", id="cm-key-for-gcm"
        ),
        pytest.param(
            f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_4568_KEY}=", "wrong padding", id="bad-pad"
        ),
        pytest.param(f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_4568_KEY}A", "base64", id="41-chars"),
        pytest.param(
            f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_4568_KEY}|2^49", "lifetime", id="lifetime-2^49"
        ),
        pytest.param(
            f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_4568_KEY}|0", "lifetime", id="lifetime-0"
        ),
        pytest.param(f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_4568_KEY} KDR=1", "KDR=1", id="kdr"),
        pytest.param(
            f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_4568_KEY} UNENCRYPTED_SRTCP",
            "UNENCRYPTED_SRTCP",
            id="unencrypted-srtcp",
        ),
        pytest.param(
            f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_4568_KEY} UNENCRYPTED_SRTP",
            "UNENCRYPTED_SRTP",
            id="unencrypted-srtp",
        ),
        pytest.param(
            f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_4568_KEY} unauthenticated_srtp",
            "unauthenticated_srtp",
            id="unauthenticated-srtp",
        ),
        pytest.param(
            f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_4568_KEY} WSH=lots", "WSH=", id="bad-wsh"
        ),
        pytest.param(
            f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_4568_KEY} NEW_MANDATORY=1",
            "unknown",
            id="unknown-mandatory",
        ),
    ],
)
def test_refused_lines(value: str, reason: str) -> None:
    line = crypto(value)
    with pytest.raises(MediaError, match=reason.replace("^", r"\^")):
        keys_from_crypto(line)
    assert choose_crypto([line]) is None


def test_refused_hand_built_key_info() -> None:
    # parse_crypto keeps to the grammar; a CryptoAttribute built in code need not
    line = sdp.CryptoAttribute(
        tag=1,
        suite="AES_CM_128_HMAC_SHA1_80",
        keys=(sdp.CryptoKey(method="inline", info=f"{RFC_4568_KEY}|x|y|z"),),
    )
    with pytest.raises(MediaError, match="is not <key"):
        keys_from_crypto(line)


@pytest.mark.parametrize(
    "extra",
    [
        "|2^31",  # what many phones put on every line
        "|2^48",
        "|1048576",
        " FEC_ORDER=FEC_SRTP",
        " FEC_KEY=inline:QUJjZGVmMTIzNDU2Nzg5QUJDREUwMTIzNDU2Nzg5|2^20|2:4",
        " WSH=64",
        " -FUTURE_OPTIONAL=yes",
    ],
)
def test_accepted_lifetimes_and_session_parameters(extra: str) -> None:
    line = crypto(f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_4568_KEY}{extra}")
    assert keys_from_crypto(line).suite == "AES_CM_128_HMAC_SHA1_80"


def test_unpadded_gcm_key_is_accepted() -> None:
    keys = SrtpKeys.generate("AEAD_AES_128_GCM", counting_random(8))
    assert keys.inline().endswith("==")
    line = crypto(f"3 AEAD_AES_128_GCM inline:{keys.inline().rstrip('=')}")
    assert keys_from_crypto(line) == keys


def test_suite_names_are_case_insensitive_and_echoed() -> None:
    line = crypto(f"4 aes_cm_128_hmac_sha1_80 INLINE:{RFC_4568_KEY}")
    remote = keys_from_crypto(line)
    assert remote.suite == "AES_CM_128_HMAC_SHA1_80"
    ours = SrtpKeys.generate(remote.suite, counting_random(4))
    answer = answer_crypto(line, ours)
    assert (answer.tag, answer.suite) == (4, "aes_cm_128_hmac_sha1_80")


def test_choose_crypto_follows_the_offer_order_past_what_it_refuses() -> None:
    # The example offer of RFC 4568 carries MKIs on every line; a peer that offers those first
    # and a plain line after it gets the plain one.
    offered = [
        crypto(RFC_4568_LINE),
        crypto(f"2 F8_128_HMAC_SHA1_80 inline:{RFC_4568_KEY}"),
        crypto(f"3 AES_CM_128_HMAC_SHA1_32 inline:{RFC_4568_KEY}"),
        crypto(f"4 AES_CM_128_HMAC_SHA1_80 inline:{RFC_4568_KEY}"),
    ]
    chosen = choose_crypto(offered)
    assert chosen is not None
    assert chosen.tag == 3  # the offerer's order, not ours
    assert choose_crypto(offered[:2]) is None
    assert choose_crypto([]) is None


def test_answer_crypto_mirrors_tag_and_suite() -> None:
    offered = crypto(f"7 AES_CM_128_HMAC_SHA1_32 inline:{RFC_4568_KEY}|2^31 WSH=128")
    ours = SrtpKeys.generate("AES_CM_128_HMAC_SHA1_32", counting_random(7))
    answer = answer_crypto(offered, ours)
    assert sdp.format_crypto(answer) == f"7 AES_CM_128_HMAC_SHA1_32 inline:{ours.inline()}"
    with pytest.raises(ValueError, match="with AES_CM_128_HMAC_SHA1_80 keys"):
        answer_crypto(offered, SrtpKeys.generate("AES_CM_128_HMAC_SHA1_80", counting_random(7)))


def test_offer_crypto_tags_from_one() -> None:
    random_bytes = counting_random(11)
    keys = [SrtpKeys.generate(suite, random_bytes) for suite in SUITES]
    lines = offer_crypto(keys)
    assert [(line.tag, line.suite) for line in lines] == list(enumerate(SUITES, start=1))
    assert [keys_from_crypto(line) for line in lines] == keys
    assert offer_crypto([]) == []


def test_accept_answer() -> None:
    random_bytes = counting_random(12)
    ours = [SrtpKeys.generate(suite, random_bytes) for suite in SUITES]
    theirs = SrtpKeys.generate(SUITES[2], random_bytes)
    answer = answer_crypto(offer_crypto(ours)[2], theirs)
    assert accept_answer(ours, answer) == (ours[2], theirs)
    for tag in (0, 5):
        with pytest.raises(MediaError, match="matches no offered tag"):
            accept_answer(ours, dataclasses.replace(answer, tag=tag))
    with pytest.raises(MediaError, match="we offered AES_CM_128_HMAC_SHA1_32"):
        accept_answer(ours, dataclasses.replace(answer, tag=4))


def sdes_call(suite_preference: tuple[str, ...]) -> tuple[SrtpContext, SrtpContext]:
    """An SDES offer/answer through the SDP layer: the (offerer, answerer) contexts."""
    offerer_random, answerer_random = counting_random(100), counting_random(200)
    offered_keys = [SrtpKeys.generate(suite, offerer_random) for suite in suite_preference]
    offer = sdp.parse_sdp(
        sdp.serialize_sdp(
            sdp.make_offer(
                [sdp.PCMU],
                address="192.0.2.1",
                port=4000,
                session_id=1,
                session_version=1,
                proto="RTP/SAVP",
                crypto=offer_crypto(offered_keys),
            )
        )
    )
    # the answerer
    audio = sdp.negotiate_audio(offer, [sdp.PCMU], protos=("RTP/SAVP",))
    chosen = choose_crypto(audio.offered_crypto)
    assert chosen is not None
    remote = keys_from_crypto(chosen)
    local = SrtpKeys.generate(remote.suite, answerer_random)
    answer = sdp.build_answer(
        offer,
        audio,
        address="192.0.2.2",
        port=5000,
        session_id=2,
        session_version=1,
        crypto=answer_crypto(chosen, local),
    )
    answerer = SrtpContext(local=local, remote=remote)
    # the offerer reads the answer
    (answer_line,) = sdp.parse_sdp(sdp.serialize_sdp(answer)).media[0].crypto
    offerer_local, offerer_remote = accept_answer(offered_keys, answer_line)
    return SrtpContext(local=offerer_local, remote=offerer_remote), answerer


@pytest.mark.parametrize("suites", [SUITES, SUITES[::-1], SUITES[2:3]])
def test_sdes_offer_answer_end_to_end(suites: tuple[str, ...]) -> None:
    offerer, answerer = sdes_call(suites)
    for sequence in range(3):
        packet = rtp_packet(sequence)
        assert answerer.unprotect(offerer.protect(packet)) == packet
        assert offerer.unprotect(answerer.protect(packet)) == packet


@FUZZ
@given(value=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_from_crypto_fuzz_through_the_parser(value: str) -> None:
    # the only outcomes: keys, or MediaError (after the SDP grammar's own SdpError)
    try:
        line = sdp.parse_crypto(value)
    except sdp.SdpError:
        return
    with contextlib.suppress(MediaError):
        keys_from_crypto(line)


@FUZZ
@given(
    suite=st.sampled_from([*SUITES, "aead_aes_128_gcm", "AES_CM_128_HMAC_SHA1_8", "X"]),
    method=st.sampled_from(["inline", "INLINE", "uri"]),
    key=st.binary(min_size=26, max_size=46).map(lambda b: base64.b64encode(b).decode()),
    suffix=st.sampled_from(["", "|2^20", "|2^0", "|2^999", "|12345", "|1:4", "|2^31|1:1", "|"]),
    params=st.lists(
        st.sampled_from(["KDR=3", "WSH=64", "WSH=", "-X", "FEC_ORDER=SRTP_FEC", "Y", "UNENC"]),
        max_size=3,
    ),
)
def test_from_crypto_fuzz_over_structure(
    suite: str, method: str, key: str, suffix: str, params: list[str]
) -> None:
    line = sdp.CryptoAttribute(
        tag=1,
        suite=suite,
        keys=(sdp.CryptoKey(method=method, info=key + suffix),),
        session_params=tuple(params),
    )
    try:
        keys = keys_from_crypto(line)
    except MediaError:
        assert choose_crypto([line]) is None
    else:
        assert choose_crypto([line]) is line
        assert keys.suite.upper() == suite.upper()
