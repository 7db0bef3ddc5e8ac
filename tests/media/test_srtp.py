"""SRTP: libsrtp held to published vectors, keys from their SDES parts, and malformed input.

libsrtp does the cryptography, so the question is whether we drive it right: the right profile,
key and salt split, and the right key for each direction. To answer it without trusting libsrtp,
this file carries a small reference written from the specifications - AES from FIPS-197, the
AES-CM keystream and key derivation from RFC 3711 s4.1.1 and s4.3, GCM from NIST SP 800-38D and
its SRTP use from RFC 7714 s8-s11. The reference is first checked against the published vectors
(FIPS-197 C.1/C.3, RFC 3711 B.2/B.3, RFC 7714 s16.1/s17.2), then libsrtp's output is compared with
it byte for byte for every suite, RTP and RTCP. The rest pairs two contexts in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.media.errors import MediaError
from sipbridge.media.srtp import SUITES, SrtpContext, SrtpKeys, suite_name

FUZZ = settings(max_examples=300, database=None, deadline=None)

# --- reference AES (FIPS-197) ------------------------------------------------------------------


def _xtime(a: int) -> int:
    """Multiply by x in GF(2^8) mod x^8 + x^4 + x^3 + x + 1 (FIPS-197 s4.2.1)."""
    a <<= 1
    return a ^ 0x11B if a & 0x100 else a


def _make_sbox() -> bytes:
    # Powers of the generator 3 give log and antilog tables, and with them inverses (s5.1.1).
    exp, log = [0] * 255, [0] * 256
    value = 1
    for power in range(255):
        exp[power], log[value] = value, power
        value ^= _xtime(value)
    box = []
    for byte in range(256):
        b = 0 if byte == 0 else exp[(255 - log[byte]) % 255]
        rotations = [((b << n) | (b >> (8 - n))) & 0xFF for n in range(1, 5)]
        box.append(b ^ rotations[0] ^ rotations[1] ^ rotations[2] ^ rotations[3] ^ 0x63)
    return bytes(box)


SBOX = _make_sbox()


class Aes:
    """AES-128/256 encryption of single blocks; all the counter modes need."""

    def __init__(self, key: bytes) -> None:
        nk = len(key) // 4
        assert nk in (4, 8)
        rounds = nk + 6
        words = [list(key[4 * i : 4 * i + 4]) for i in range(nk)]
        rcon = 1
        for i in range(nk, 4 * (rounds + 1)):
            word = list(words[-1])
            if i % nk == 0:  # s5.2: RotWord, SubWord, Rcon
                word = [SBOX[b] for b in word[1:] + word[:1]]
                word[0] ^= rcon
                rcon = _xtime(rcon)
            elif nk > 6 and i % nk == 4:
                word = [SBOX[b] for b in word]
            words.append([a ^ b for a, b in zip(words[i - nk], word, strict=True)])
        self.round_keys = [
            [b for word in words[4 * r : 4 * r + 4] for b in word] for r in range(rounds + 1)
        ]

    def encrypt(self, block: bytes) -> bytes:
        # The state is column-major: byte r + 4c is row r of column c (s3.4).
        state = [b ^ k for b, k in zip(block, self.round_keys[0], strict=True)]
        for number, round_key in enumerate(self.round_keys[1:], start=1):
            state = [SBOX[b] for b in state]
            state = [state[r + 4 * ((c + r) % 4)] for c in range(4) for r in range(4)]
            if number < len(self.round_keys) - 1:  # no MixColumns in the last round
                mixed: list[int] = []
                for c in range(4):
                    a = state[4 * c : 4 * c + 4]
                    doubled = [_xtime(x) for x in a]
                    mixed += [
                        doubled[r]
                        ^ doubled[(r + 1) % 4]
                        ^ a[(r + 1) % 4]
                        ^ a[(r + 2) % 4]
                        ^ a[(r + 3) % 4]
                        for r in range(4)
                    ]
                state = mixed
            state = [b ^ k for b, k in zip(state, round_key, strict=True)]
        return bytes(state)


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def counter_keystream(aes: Aes, counter: int, length: int) -> bytes:
    """AES in counter mode: E(counter), E(counter + 1), ... (RFC 3711 s4.1.1)."""
    blocks = (
        aes.encrypt(((counter + n) % 2**128).to_bytes(16, "big")) for n in range(-(-length // 16))
    )
    return b"".join(blocks)[:length]


# --- reference SRTP (RFC 3711 s4, RFC 7714) ----------------------------------------------------

LABEL_RTP_CIPHER, LABEL_RTP_AUTH, LABEL_RTP_SALT = 0, 1, 2
LABEL_RTCP_CIPHER, LABEL_RTCP_AUTH, LABEL_RTCP_SALT = 3, 4, 5


def derive(master_key: bytes, master_salt: bytes, label: int, length: int) -> bytes:
    """RFC 3711 s4.3.1 with no key derivation rate: x = label * 2^48 XOR salt, PRF(x * 2^16).

    RFC 7714 s11 reuses it for GCM's 96-bit salt, which fills the first 96 of the 112 bits.
    """
    x = int.from_bytes(master_salt.ljust(14, b"\0"), "big") ^ (label << 48)
    return counter_keystream(Aes(master_key), x << 16, length)


@dataclasses.dataclass(frozen=True)
class ReferenceSuite:
    name: str
    key_length: int
    salt_length: int
    rtp_tag: int  # octets; 16 is the GCM tag, otherwise an HMAC-SHA1 truncation
    gcm: bool


REFERENCE_SUITES = {
    s.name: s
    for s in (
        ReferenceSuite("AES_CM_128_HMAC_SHA1_80", 16, 14, 10, gcm=False),
        ReferenceSuite("AES_CM_128_HMAC_SHA1_32", 16, 14, 4, gcm=False),
        ReferenceSuite("AEAD_AES_128_GCM", 16, 12, 16, gcm=True),
        ReferenceSuite("AEAD_AES_256_GCM", 32, 12, 16, gcm=True),
    )
}


def _gf128_multiply(x: int, y: int) -> int:
    """Multiplication in GF(2^128), GCM's bit order (SP 800-38D s6.3, Algorithm 1)."""
    product, v = 0, y
    for bit in range(127, -1, -1):
        if (x >> bit) & 1:
            product ^= v
        v = (v >> 1) ^ (0xE1 << 120) if v & 1 else v >> 1
    return product


def gcm_seal(key: bytes, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-GCM with a 96-bit IV and a 128-bit tag: ciphertext || tag (SP 800-38D s7.1)."""
    aes = Aes(key)
    h = int.from_bytes(aes.encrypt(bytes(16)), "big")
    j0 = int.from_bytes(iv + b"\0\0\0\1", "big")
    ciphertext = xor(plaintext, counter_keystream(aes, j0 + 1, len(plaintext)))
    ghash = 0
    blocks = aad + bytes(-len(aad) % 16) + ciphertext + bytes(-len(ciphertext) % 16)
    blocks += struct.pack("!QQ", 8 * len(aad), 8 * len(ciphertext))
    for start in range(0, len(blocks), 16):
        ghash = _gf128_multiply(ghash ^ int.from_bytes(blocks[start : start + 16], "big"), h)
    tag = xor(aes.encrypt(j0.to_bytes(16, "big")), ghash.to_bytes(16, "big"))
    return ciphertext + tag


def reference_protect(suite: ReferenceSuite, master: bytes, rtp: bytes, roc: int = 0) -> bytes:
    """SRTP protection of `rtp` (fixed 12-octet header) under master key||salt (RFC 3711 s3.3)."""
    master_key, master_salt = master[: suite.key_length], master[suite.key_length :]
    key = derive(master_key, master_salt, LABEL_RTP_CIPHER, suite.key_length)
    salt = derive(master_key, master_salt, LABEL_RTP_SALT, suite.salt_length)
    sequence, ssrc = struct.unpack_from("!H4xI", rtp, 2)
    header, payload = rtp[:12], rtp[12:]
    if suite.gcm:
        # RFC 7714 s8.1: IV = (00 00 || SSRC || ROC || SEQ) XOR salt; the header is the AAD
        iv = xor(struct.pack("!HIIH", 0, ssrc, roc, sequence), salt)
        return header + gcm_seal(key, iv, payload, header)
    index = (roc << 16) | sequence
    counter = (int.from_bytes(salt, "big") << 16) ^ (ssrc << 64) ^ (index << 16)
    protected = header + xor(payload, counter_keystream(Aes(key), counter, len(payload)))
    auth_key = derive(master_key, master_salt, LABEL_RTP_AUTH, 20)
    mac = hmac.new(auth_key, protected + roc.to_bytes(4, "big"), hashlib.sha1).digest()
    return protected + mac[: suite.rtp_tag]


def reference_protect_rtcp(
    suite: ReferenceSuite, master: bytes, rtcp: bytes, srtcp_index: int
) -> bytes:
    """SRTCP protection, E flag set (RFC 3711 s3.4; RFC 7714 s9 for GCM)."""
    master_key, master_salt = master[: suite.key_length], master[suite.key_length :]
    key = derive(master_key, master_salt, LABEL_RTCP_CIPHER, suite.key_length)
    salt = derive(master_key, master_salt, LABEL_RTCP_SALT, suite.salt_length)
    (ssrc,) = struct.unpack_from("!I", rtcp, 4)
    header, payload = rtcp[:8], rtcp[8:]
    e_and_index = (0x80000000 | srtcp_index).to_bytes(4, "big")
    if suite.gcm:
        # RFC 7714 s9.1: IV = (00 00 || SSRC || 00 00 || 0 || index) XOR salt;
        # AAD = header || E || index, which follows the tag on the wire
        iv = xor(struct.pack("!HIHI", 0, ssrc, 0, srtcp_index), salt)
        return header + gcm_seal(key, iv, payload, header + e_and_index) + e_and_index
    counter = (int.from_bytes(salt, "big") << 16) ^ (ssrc << 64) ^ (srtcp_index << 16)
    protected = header + xor(payload, counter_keystream(Aes(key), counter, len(payload)))
    protected += e_and_index
    auth_key = derive(master_key, master_salt, LABEL_RTCP_AUTH, 20)
    # SRTCP keeps the 80-bit tag under both AES-CM suites (RFC 4568 s6.2.2)
    return protected + hmac.new(auth_key, protected, hashlib.sha1).digest()[:10]


# --- the reference against the published vectors -----------------------------------------------


def test_reference_aes_matches_fips_197_appendix_c() -> None:
    plaintext = bytes.fromhex("00112233445566778899aabbccddeeff")
    # C.1 AES-128 and C.3 AES-256, key 00 01 02 ...
    assert Aes(bytes(range(16))).encrypt(plaintext).hex() == "69c4e0d86a7b0430d8cdb78070b4c55a"
    assert Aes(bytes(range(32))).encrypt(plaintext).hex() == "8ea2b7ca516745bfeafc49904b496089"


def test_reference_keystream_matches_rfc_3711_b2() -> None:
    # B.2 AES-CM: session key, session salt, SSRC 0, ROC 0, SEQ 0
    key = bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C")
    salt = bytes.fromhex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD")
    keystream = counter_keystream(Aes(key), int.from_bytes(salt, "big") << 16, 48)
    assert keystream.hex().upper() == (
        "E03EAD0935C95E80E166B16DD92B4EB4"
        "D23513162B02D0F72A43A2FE4A5F97AB"
        "41E95B3BB0A2E8DD477901E4FCA894C0"
    )


# B.3 key derivation: master key and master salt
RFC_3711_B3_MASTER = bytes.fromhex("E1F97A0D3E018BE0D64FA32C06DE41390EC675AD498AFEEBB6960B3AABE6")


def test_reference_key_derivation_matches_rfc_3711_b3() -> None:
    key, salt = RFC_3711_B3_MASTER[:16], RFC_3711_B3_MASTER[16:]
    assert derive(key, salt, LABEL_RTP_CIPHER, 16).hex().upper() == (
        "C61E7A93744F39EE10734AFE3FF7A087"
    )
    assert derive(key, salt, LABEL_RTP_SALT, 14).hex().upper() == "30CBBC08863D8C85D49DB34A9AE1"
    assert derive(key, salt, LABEL_RTP_AUTH, 20).hex().upper() == (
        "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4"
    )


# RFC 7714 s16-s17: session key 00 01 02 ..., session salt "Quid pro quo"
RFC_7714_SALT = bytes.fromhex("517569642070726f2071756f")


def test_reference_gcm_matches_rfc_7714_srtp_vector() -> None:
    # s16.1: AEAD_AES_128_GCM, SSRC 0x5501a0b2, SEQ 0xf17b, ROC 0,
    # payload "Gallia est omnis divisa in partes tres"
    rtp = bytes.fromhex(
        "8040f17b 8041f8d3 5501a0b2 47616c6c 69612065 7374206f 6d6e6973 20646976"
        " 69736120 696e2070 61727465 73207472 6573"
    )
    iv = xor(struct.pack("!HIIH", 0, 0x5501A0B2, 0, 0xF17B), RFC_7714_SALT)
    assert iv.hex() == "51753c6580c2726f20718414"
    sealed = rtp[:12] + gcm_seal(bytes(range(16)), iv, rtp[12:], rtp[:12])
    assert sealed.hex() == (
        "8040f17b8041f8d35501a0b2"
        "f24de3a3fb34de6cacba861c9d7e4bcabe633bd50d294e6f42a5f47a51c7d19b36de3adf8833"
        "899d7f27beb16a9152cf765ee4390cce"  # the tag
    )


# RFC 7714 s17.2: an RTCP sender report from SSRC "Mars"
RFC_7714_RTCP = bytes.fromhex(
    "81c8000d 4d617273 4e545031 4e545032 52545020 0000042a 0000e930 4c756e61"
    " deadbeef deadbeef deadbeef deadbeef deadbeef"
)


def test_reference_gcm_matches_rfc_7714_srtcp_vector() -> None:
    # s17.2: AEAD_AES_256_GCM, SRTCP index 0x5d4, encrypted
    e_and_index = bytes.fromhex("800005d4")
    iv = xor(struct.pack("!HIHI", 0, 0x4D617273, 0, 0x5D4), RFC_7714_SALT)
    assert iv.hex() == "517524055203726f207170bb"
    body = gcm_seal(bytes(range(32)), iv, RFC_7714_RTCP[8:], RFC_7714_RTCP[:8] + e_and_index)
    assert (RFC_7714_RTCP[:8] + body + e_and_index).hex() == (
        "81c8000d4d617273"
        "d50ae4d1f5ce5d304ba297e47d470c282c3ece5dbffe0a50a2eaa5c1110555be8415f658c61de047"
        "6f1b6fad1d1eb30c4446839f57ff6f6cb26ac3be"  # the tag
        "800005d4"
    )


# --- libsrtp against the reference -------------------------------------------------------------


def rtp_packet(sequence: int = 0x1234, ssrc: int = 0xDECAFBAD, payload: bytes = b"") -> bytes:
    """A PCMU packet: 12-octet header and 160 octets (20 ms) unless `payload` is given."""
    header = struct.pack("!BBHII", 0x80, 0, sequence, sequence * 160, ssrc)
    return header + (payload or bytes(range(160)))


def master_for(suite: str) -> bytes:
    """Fixed key||salt for `suite`: RFC 3711 B.3's, stretched or cut to the suite's lengths."""
    reference = REFERENCE_SUITES[suite]
    key = (RFC_3711_B3_MASTER[:16] * 2)[: reference.key_length]
    return key + RFC_3711_B3_MASTER[16 : 16 + reference.salt_length]


def keys_for(suite: str, master: bytes) -> SrtpKeys:
    length = REFERENCE_SUITES[suite].key_length
    return SrtpKeys(suite=suite, master_key=master[:length], master_salt=master[length:])


def test_suites_are_the_reference_suites() -> None:
    assert set(SUITES) == set(REFERENCE_SUITES)
    assert SUITES[0] == "AEAD_AES_256_GCM"


@pytest.mark.parametrize("suite", SUITES)
def test_libsrtp_protect_equals_reference(suite: str) -> None:
    master = master_for(suite)
    keys = keys_for(suite, master)
    context = SrtpContext(local=keys, remote=keys)
    packet = rtp_packet()
    expected = reference_protect(REFERENCE_SUITES[suite], master, packet)
    assert context.protect(packet) == expected
    assert len(expected) == len(packet) + REFERENCE_SUITES[suite].rtp_tag
    # and libsrtp accepts what the reference protects
    receiver = SrtpContext(local=keys, remote=keys)
    assert receiver.unprotect(expected) == packet
    later = rtp_packet(sequence=0x1235)
    assert receiver.unprotect(reference_protect(REFERENCE_SUITES[suite], master, later)) == later


@pytest.mark.parametrize("suite", SUITES)
def test_libsrtp_protect_rtcp_equals_reference(suite: str) -> None:
    master = master_for(suite)
    keys = keys_for(suite, master)
    context = SrtpContext(local=keys, remote=keys)
    protected = context.protect_rtcp(RFC_7714_RTCP)
    # libsrtp numbers SRTCP packets from 1
    expected = reference_protect_rtcp(REFERENCE_SUITES[suite], master, RFC_7714_RTCP, 1)
    assert protected == expected
    receiver = SrtpContext(local=keys, remote=keys)
    second = reference_protect_rtcp(REFERENCE_SUITES[suite], master, RFC_7714_RTCP, 2)
    assert receiver.unprotect_rtcp(second) == RFC_7714_RTCP


def test_rollover_counter_reaches_the_keystream() -> None:
    # After sequence 0xffff the ROC becomes 1 (RFC 3711 s3.3.1); it must enter IV and tag.
    suite = "AES_CM_128_HMAC_SHA1_80"
    master = master_for(suite)
    context = SrtpContext(local=keys_for(suite, master), remote=keys_for(suite, master))
    context.protect(rtp_packet(sequence=0xFFFF))
    wrapped = rtp_packet(sequence=0)
    assert context.protect(wrapped) == reference_protect(
        REFERENCE_SUITES[suite], master, wrapped, roc=1
    )


# --- two endpoints in memory -------------------------------------------------------------------


def counting_random(seed: int) -> Callable[[int], bytes]:
    """A deterministic stand-in for `secrets.token_bytes`: distinct, reproducible keys."""
    state = [seed]

    def random_bytes(length: int) -> bytes:
        state[0] += 1
        return hashlib.shake_256(state[0].to_bytes(8, "big")).digest(length)

    return random_bytes


def pair(suite: str) -> tuple[SrtpContext, SrtpContext]:
    """Alice and Bob: each protects with its own key and unprotects with the other's."""
    random_bytes = counting_random(1)
    alice_keys = SrtpKeys.generate(suite, random_bytes)
    bob_keys = SrtpKeys.generate(suite, random_bytes)
    return (
        SrtpContext(local=alice_keys, remote=bob_keys),
        SrtpContext(local=bob_keys, remote=alice_keys),
    )


@pytest.mark.parametrize("suite", SUITES)
def test_round_trip_both_ways(suite: str) -> None:
    alice, bob = pair(suite)
    for sequence in range(100, 110):
        to_bob = rtp_packet(sequence, ssrc=0xA11CE)
        to_alice = rtp_packet(sequence, ssrc=0xB0B)
        assert bob.unprotect(alice.protect(to_bob)) == to_bob
        assert alice.unprotect(bob.protect(to_alice)) == to_alice
    assert bob.unprotect_rtcp(alice.protect_rtcp(RFC_7714_RTCP)) == RFC_7714_RTCP
    assert alice.unprotect_rtcp(bob.protect_rtcp(RFC_7714_RTCP)) == RFC_7714_RTCP


@pytest.mark.parametrize("suite", SUITES)
def test_own_packets_do_not_unprotect(suite: str) -> None:
    # Each direction has its own key: a reflected packet fails authentication.
    alice, _ = pair(suite)
    with pytest.raises(MediaError, match="authentication"):
        alice.unprotect(alice.protect(rtp_packet()))


@pytest.mark.parametrize("suite", SUITES)
def test_reordered_packets_within_the_window(suite: str) -> None:
    alice, bob = pair(suite)
    protected = [alice.protect(rtp_packet(sequence)) for sequence in range(1, 21)]
    for packet in reversed(protected):
        bob.unprotect(packet)


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize(
    "offset", [1, 2, 11, 12, 100, -1], ids=["M-PT", "seq", "ssrc", "payload", "mid", "tag"]
)
def test_tampered_packet(suite: str, offset: int) -> None:
    alice, bob = pair(suite)
    protected = bytearray(alice.protect(rtp_packet()))
    protected[offset] ^= 0x01
    with pytest.raises(MediaError, match="SRTP unprotect failed"):
        bob.unprotect(bytes(protected))


@pytest.mark.parametrize("suite", SUITES)
def test_tampered_rtcp(suite: str) -> None:
    alice, bob = pair(suite)
    protected = bytearray(alice.protect_rtcp(RFC_7714_RTCP))
    protected[20] ^= 0x80
    with pytest.raises(MediaError, match="SRTCP unprotect failed: authentication"):
        bob.unprotect_rtcp(bytes(protected))


@pytest.mark.parametrize("suite", SUITES)
def test_replayed_packet(suite: str) -> None:
    alice, bob = pair(suite)
    protected = alice.protect(rtp_packet())
    bob.unprotect(protected)
    with pytest.raises(MediaError, match="replay"):
        bob.unprotect(protected)
    rtcp = alice.protect_rtcp(RFC_7714_RTCP)
    bob.unprotect_rtcp(rtcp)
    with pytest.raises(MediaError, match="replay"):
        bob.unprotect_rtcp(rtcp)


def test_packet_older_than_the_replay_window() -> None:
    alice, bob = pair("AES_CM_128_HMAC_SHA1_80")
    old = alice.protect(rtp_packet(1))
    bob.unprotect(alice.protect(rtp_packet(1000)))
    with pytest.raises(MediaError, match="replay"):
        bob.unprotect(old)


def test_protecting_a_sequence_number_twice_is_refused() -> None:
    # allow_repeat_tx is off: the same index twice would reuse keystream (RFC 3711 s9.1).
    alice, _ = pair("AES_CM_128_HMAC_SHA1_80")
    alice.protect(rtp_packet(7))
    with pytest.raises(MediaError, match="SRTP protect failed: replay"):
        alice.protect(rtp_packet(7, payload=b"other"))


@pytest.mark.parametrize("suite", SUITES)
def test_wrong_key(suite: str) -> None:
    alice, _ = pair(suite)
    other = SrtpKeys.generate(suite, counting_random(99))
    stranger = SrtpContext(local=other, remote=other)
    with pytest.raises(MediaError, match="authentication"):
        stranger.unprotect(alice.protect(rtp_packet()))
    with pytest.raises(MediaError, match="authentication"):
        stranger.unprotect_rtcp(alice.protect_rtcp(RFC_7714_RTCP))


def test_suites_do_not_mix() -> None:
    master = master_for("AES_CM_128_HMAC_SHA1_80")
    sender = SrtpContext(
        local=keys_for("AES_CM_128_HMAC_SHA1_80", master),
        remote=keys_for("AES_CM_128_HMAC_SHA1_80", master),
    )
    receiver_keys = keys_for("AES_CM_128_HMAC_SHA1_32", master)
    receiver = SrtpContext(local=receiver_keys, remote=receiver_keys)
    with pytest.raises(MediaError, match="authentication"):
        receiver.unprotect(sender.protect(rtp_packet()))


def test_sizes_at_the_buffer_limit() -> None:
    alice, bob = pair("AES_CM_128_HMAC_SHA1_80")
    largest = rtp_packet(payload=b"\x55" * (1356 - 12))
    assert bob.unprotect(alice.protect(largest)) == largest
    with pytest.raises(MediaError, match="too long"):
        alice.protect(rtp_packet(2, payload=b"\x55" * (1357 - 12)))
    with pytest.raises(MediaError, match="too long"):
        bob.unprotect(b"\x80" + bytes(1500))
    with pytest.raises(MediaError, match="too long"):
        alice.protect_rtcp(RFC_7714_RTCP[:8] + bytes(1400))
    with pytest.raises(MediaError, match="too long"):
        bob.unprotect_rtcp(b"\x81\xc8" + bytes(1500))


@pytest.mark.parametrize(
    "data",
    [b"", b"\x80", b"\x80\x00" + bytes(9), b"\x8f\x00" + bytes(20), b"\x90\x00" + bytes(10)],
    ids=["empty", "one-octet", "eleven-octets", "csrc-beyond", "extension-missing"],
)
def test_short_input(data: bytes) -> None:
    alice, bob = pair("AES_CM_128_HMAC_SHA1_80")
    with pytest.raises(MediaError):
        bob.unprotect(data)
    with pytest.raises(MediaError):
        bob.unprotect_rtcp(data)
    with pytest.raises(MediaError):
        alice.protect(data)


@pytest.mark.parametrize("data", [b"", b"\x81\xc8\x00"], ids=["empty", "three-octets"])
def test_short_rtcp_to_protect(data: bytes) -> None:
    alice, _ = pair("AES_CM_128_HMAC_SHA1_80")
    with pytest.raises(MediaError, match="SRTCP protect failed"):
        alice.protect_rtcp(data)


@FUZZ
@given(data=st.binary(max_size=1600), suite=st.sampled_from(SUITES))
def test_unprotect_fuzz(data: bytes, suite: str) -> None:
    # the only outcomes: a packet, or MediaError
    _, bob = pair(suite)
    for unprotect in (bob.unprotect, bob.unprotect_rtcp):
        with contextlib.suppress(MediaError):
            unprotect(data)


@FUZZ
@given(data=st.binary(max_size=1600), suite=st.sampled_from(SUITES))
def test_protect_fuzz(data: bytes, suite: str) -> None:
    alice, bob = pair(suite)
    try:
        protected = alice.protect(data)
    except MediaError:
        pass
    else:
        assert bob.unprotect(protected) == data
    with contextlib.suppress(MediaError):
        alice.protect_rtcp(data)


@FUZZ
@given(
    packet=st.binary(min_size=12, max_size=300).map(lambda b: bytes([0x80, b[1] & 0x7F]) + b[2:]),
    position=st.integers(min_value=0),
    flip=st.integers(min_value=1, max_value=255),
)
def test_any_single_byte_change_is_caught(packet: bytes, position: int, flip: int) -> None:
    alice, bob = pair("AES_CM_128_HMAC_SHA1_32")
    protected = bytearray(alice.protect(packet))
    protected[position % len(protected)] ^= flip
    with pytest.raises(MediaError):
        bob.unprotect(bytes(protected))


@pytest.mark.parametrize(
    ("suite", "length", "inline_length"),
    [
        ("AES_CM_128_HMAC_SHA1_80", 30, 40),
        ("AES_CM_128_HMAC_SHA1_32", 30, 40),
        ("AEAD_AES_128_GCM", 28, 40),  # "==" padded (RFC 7714 s14.1: 128-bit key, 96-bit salt)
        ("AEAD_AES_256_GCM", 44, 60),  # "=" padded
    ],
)
def test_generate_draws_key_and_salt(suite: str, length: int, inline_length: int) -> None:
    drawn: list[int] = []

    def random_bytes(count: int) -> bytes:
        drawn.append(count)
        return bytes(range(count))

    keys = SrtpKeys.generate(suite, random_bytes)
    assert drawn == [length]
    assert keys.master_key + keys.master_salt == bytes(range(length))
    assert len(keys.inline()) == inline_length


def test_generate_checks_the_random_source() -> None:
    with pytest.raises(ValueError, match="did not return 30 bytes"):
        SrtpKeys.generate("AES_CM_128_HMAC_SHA1_80", lambda n: bytes(n - 1))
    with pytest.raises(MediaError, match="not supported"):
        SrtpKeys.generate("F8_128_HMAC_SHA1_80", bytes)


def test_generate_takes_any_case_and_names_the_suite_canonically() -> None:
    keys = SrtpKeys.generate("aes_cm_128_hmac_sha1_80", bytes)
    assert keys.suite == "AES_CM_128_HMAC_SHA1_80"


def test_keys_validate_and_stay_out_of_repr() -> None:
    keys = SrtpKeys.generate("AES_CM_128_HMAC_SHA1_80", counting_random(3))
    assert repr(keys) == "SrtpKeys(suite='AES_CM_128_HMAC_SHA1_80')"
    with pytest.raises(ValueError, match="not one of"):
        SrtpKeys(suite="NULL_HMAC_SHA1_80", master_key=bytes(16), master_salt=bytes(14))
    with pytest.raises(ValueError, match="16-byte key and a 14-byte salt"):
        SrtpKeys(suite="AES_CM_128_HMAC_SHA1_80", master_key=bytes(16), master_salt=bytes(12))


# --- keys from their SDES parts (RFC 4568 s6.1) ------------------------------------------------
# Reading `a=crypto` lines out of SDP, and SDES offer/answer, are tested in
# tests/telephony/test_sdes.py; here the media layer's own entry point, with plain values.


@pytest.mark.parametrize("suite", SUITES)
def test_from_sdes_reads_what_inline_writes(suite: str) -> None:
    keys = SrtpKeys.generate(suite, counting_random(5))
    assert SrtpKeys.from_sdes(tag=1, suite=suite, key_params=[("inline", keys.inline())]) == keys
    assert (
        SrtpKeys.from_sdes(
            tag=1, suite=suite.lower(), key_params=[("INLINE", keys.inline() + "|2^31")]
        )
        == keys
    )
    assert suite_name(suite.lower()) == suite


def test_from_sdes_refuses_what_libsrtp_cannot_do() -> None:
    key = SrtpKeys.generate("AES_CM_128_HMAC_SHA1_80", counting_random(6)).inline()
    suite = "AES_CM_128_HMAC_SHA1_80"
    refused = [
        ({"key_params": [("inline", key), ("inline", key)]}, "a=crypto:9 has 2 keys"),
        ({"key_params": [("uri", key)]}, "not inline"),
        ({"key_params": [("inline", key + "|1:4")]}, "MKI"),
        ({"key_params": [("inline", key)], "session_params": ["KDR=1"]}, "KDR=1"),
    ]
    for arguments, reason in refused:
        with pytest.raises(MediaError, match=reason):
            SrtpKeys.from_sdes(tag=9, suite=suite, **arguments)  # type: ignore[arg-type]
    with pytest.raises(MediaError, match="not supported"):
        SrtpKeys.from_sdes(tag=9, suite="F8_128_HMAC_SHA1_80", key_params=[("inline", key)])
    with pytest.raises(MediaError, match="not supported"):
        suite_name("F8_128_HMAC_SHA1_80")
