"""SRTP keys and an SRTP context over libsrtp (RFC 3711, RFC 7714), with RFC 4568 key checks.

Sans-IO like the rest of `media/`: keys come from the caller's random source, and the context
turns plain RTP/RTCP bytes into protected bytes and back. libsrtp (through pylibsrtp) does the
cryptography; this module decides which SDES keys we can honour and keeps libsrtp's failures
inside `MediaError`.

`media/` knows no SDP and no SIP (`tests/test_layers.py` checks it): `SrtpKeys.from_sdes` takes
the pieces of one RFC 4568 `a=crypto` line - tag, suite, key-params, session-params - as plain
values, and `SrtpKeys.inline` gives the key-info back. Reading those lines out of SDP and the
SDES offer/answer (which line to choose, what to answer, which of our keys an answer picked)
live in `telephony/sdes.py`.

What we refuse, so that the offer falls through to the next line or to a 488, is what libsrtp
cannot do through pylibsrtp or what would weaken the call: suites other than those in `SUITES`;
more than one key or an MKI (RFC 4568 s6.1: pylibsrtp sets one master key and no MKI); key
methods other than `inline`; a lifetime beyond the suite's 2^48 packets; a key derivation rate
(KDR, s6.3.1: libsrtp derives session keys once); and UNENCRYPTED_SRTP, UNENCRYPTED_SRTCP and
UNAUTHENTICATED_SRTP (s6.3.2-6.3.3). A shorter lifetime is accepted: it binds the key's sender,
which is the peer, and it is what many phones put on every line (`|2^31`). FEC_ORDER and FEC_KEY
only matter for an FEC stream, which we never negotiate; WSH is a hint and libsrtp's 128-packet
replay window already exceeds its minimum of 64 (s6.3.6); parameters marked optional with a
leading "-" (s9.2) are ignored; any other session parameter refuses the line.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence

import pylibsrtp
from mypy_extensions import mypyc_attr

from sipbridge.media.errors import MediaError

__all__ = ["SUITES", "SrtpContext", "SrtpKeys", "suite_name"]


@dataclasses.dataclass(frozen=True, slots=True)
class _Suite:
    profile: int
    key_length: int
    salt_length: int


# Most preferred first. The AEAD suites (RFC 7714 s14.1) are stronger and do one pass over the
# packet; a peer that does not know them skips to the AES-CM lines (RFC 4568 s7.1.2). There is
# no AES_256_CM_HMAC_SHA1_* (RFC 6188): pylibsrtp 1.0 exposes no profile for it. The `_32` suite
# shortens only the SRTP tag; SRTCP keeps 80 bits (RFC 4568 s6.2.2).
_SUITES: Mapping[str, _Suite] = {
    "AEAD_AES_256_GCM": _Suite(pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 32, 12),
    "AEAD_AES_128_GCM": _Suite(pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 16, 12),
    "AES_CM_128_HMAC_SHA1_80": _Suite(pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 16, 14),
    "AES_CM_128_HMAC_SHA1_32": _Suite(pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32, 16, 14),
}
SUITES: tuple[str, ...] = tuple(_SUITES)
# ABNF string literals are case-insensitive (RFC 5234 s2.3), suite names included.
_BY_UPPER_NAME = {name.upper(): name for name in _SUITES}

# RFC 4568 s6.1 (SRTP key-info): key||salt ["|" lifetime] ["|" MKI ":" length], where
# lifetime = ["2^"] 1*DIGIT and the key||salt is base64 (RFC 3548 s3).
_INLINE = re.compile(
    r"(?P<key>[A-Za-z0-9+/]+={0,2})"
    r"(?:\|(?:2\^(?P<power>[0-9]{1,3})|(?P<count>[0-9]{1,20})))?"
    r"(?:\|(?P<mki>[0-9]{1,20}:[0-9]{1,3}))?"
)
# s6.2.1, s6.2.2 and RFC 7714 s14.1: no master key may protect more than 2^48 SRTP packets.
_MAX_LIFETIME = 2**48
# s6.3.6: WSH=<window size in packets>
_WSH = re.compile(r"WSH=[0-9]{1,10}")
_REFUSED_PARAMETERS = ("KDR=", "UNENCRYPTED_SRTP", "UNENCRYPTED_SRTCP", "UNAUTHENTICATED_SRTP")
_IGNORED_PARAMETERS = ("FEC_ORDER=", "FEC_KEY=")


def _suite(name: str) -> tuple[str, _Suite]:
    canonical = _BY_UPPER_NAME.get(name.upper())
    if canonical is None:
        raise MediaError(f"SRTP crypto suite {name!r} is not supported")
    return canonical, _SUITES[canonical]


def suite_name(name: str) -> str:
    """The name of a suite in `SUITES` as we spell it, whatever its case; `MediaError` if we do
    not support it."""
    return _suite(name)[0]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SrtpKeys:
    """One direction's SRTP master key and salt, and the suite they are for.

    The key material stays out of `repr`, so that logging a call never logs its keys.
    """

    suite: str
    master_key: bytes = dataclasses.field(repr=False)
    master_salt: bytes = dataclasses.field(repr=False)

    def __post_init__(self) -> None:
        if self.suite not in _SUITES:
            raise ValueError(f"SRTP crypto suite {self.suite!r} is not one of {SUITES}")
        suite = _SUITES[self.suite]
        if len(self.master_key) != suite.key_length or len(self.master_salt) != suite.salt_length:
            raise ValueError(
                f"{self.suite} takes a {suite.key_length}-byte key"
                f" and a {suite.salt_length}-byte salt"
            )

    def inline(self) -> str:
        """The base64 key||salt for an `inline:` key-param (RFC 4568 s6.1)."""
        return base64.b64encode(self.master_key + self.master_salt).decode("ascii")

    @classmethod
    def generate(cls, suite: str, random_bytes: Callable[[int], bytes]) -> SrtpKeys:
        """Fresh keys for `suite`, drawn from `random_bytes` (pass `secrets.token_bytes`).

        RFC 4568 s6.1 and RFC 3711 s8.1: the master key must be random and never reused, so
        draw new keys for every offer and answer.
        """
        name, params = _suite(suite)
        length = params.key_length + params.salt_length
        material = random_bytes(length)
        if not isinstance(material, bytes) or len(material) != length:
            raise ValueError(f"random_bytes({length}) did not return {length} bytes")
        return cls(
            suite=name,
            master_key=material[: params.key_length],
            master_salt=material[params.key_length :],
        )

    @classmethod
    def from_sdes(
        cls,
        *,
        tag: int,
        suite: str,
        key_params: Sequence[tuple[str, str]],
        session_params: Sequence[str] = (),
    ) -> SrtpKeys:
        """The keys one SDES line declares, given as its parts: `a=crypto:<tag> <suite>
        <method>:<info>[;...] [<session-params>]` (RFC 4568 s9.1); `MediaError` if we cannot
        use them. The tag only names the line in errors.

        The caller answers 488 when no offered line is usable.
        """
        name, params = _suite(suite)
        if len(key_params) != 1:
            # s6.1: several master keys need MKIs to tell them apart, and we take no MKI.
            raise MediaError(f"a=crypto:{tag} has {len(key_params)} keys, we take one")
        method, info = key_params[0]
        if method.lower() != "inline":
            raise MediaError(f"a=crypto:{tag} key method {method!r} is not inline")
        match = _INLINE.fullmatch(info)
        if match is None:
            raise MediaError(f"a=crypto:{tag} inline key is not <key||salt>[|...]")
        if match["mki"] is not None:
            raise MediaError(f"a=crypto:{tag} has an MKI ({match['mki']}), unsupported")
        power, count = match["power"], match["count"]
        lifetime = 2 ** int(power) if power is not None else int(count or _MAX_LIFETIME)
        if not 1 <= lifetime <= _MAX_LIFETIME:
            raise MediaError(f"a=crypto:{tag} key lifetime is not 1 to 2^48 packets")
        material = _decode_key(match["key"], tag)
        if len(material) != params.key_length + params.salt_length:
            raise MediaError(
                f"a=crypto:{tag} {name} key||salt is {len(material)} bytes,"
                f" not {params.key_length + params.salt_length}"
            )
        for parameter in session_params:
            _check_session_parameter(parameter, tag)
        return cls(
            suite=name,
            master_key=material[: params.key_length],
            master_salt=material[params.key_length :],
        )


def _decode_key(text: str, tag: int) -> bytes:
    # Padding may be left out (some stacks drop the "=" of GCM's 28- and 44-byte keys), but
    # when present it must be right.
    stripped = text.rstrip("=")
    padding = -len(stripped) % 4
    if len(text) not in (len(stripped), len(stripped) + padding):
        raise MediaError(f"a=crypto:{tag} inline key is not base64: wrong padding")
    try:
        return base64.b64decode(stripped + "=" * padding, validate=True)
    except binascii.Error:
        raise MediaError(f"a=crypto:{tag} inline key is not base64") from None


def _check_session_parameter(parameter: str, tag: int) -> None:
    upper = parameter.upper()
    if upper.startswith(_REFUSED_PARAMETERS):
        raise MediaError(f"a=crypto:{tag} session parameter {parameter} is not supported")
    if upper.startswith(_IGNORED_PARAMETERS) or parameter.startswith("-"):
        return
    if upper.startswith("WSH="):
        if not _WSH.fullmatch(upper):
            raise MediaError(f"a=crypto:{tag} {parameter} is not WSH=<packets>")
        return
    raise MediaError(f"a=crypto:{tag} session parameter {parameter} is unknown")


def _policy(keys: SrtpKeys, ssrc_type: int) -> pylibsrtp.Policy:
    return pylibsrtp.Policy(
        key=keys.master_key + keys.master_salt,
        ssrc_type=ssrc_type,
        srtp_profile=_SUITES[keys.suite].profile,
    )


@mypyc_attr(allow_interpreted_subclasses=True)  # tests stand in for a refusing libsrtp
class SrtpContext:
    """SRTP and SRTCP for one call leg: protect what we send, unprotect what we receive.

    The peer's SSRC is not known until its first packet, so inbound uses libsrtp's wildcard
    template (`ssrc_any_inbound`), which authenticates a new SSRC's first packet before keeping
    a stream for it; outbound uses `ssrc_any_outbound` the same way. libsrtp takes one template
    per session, hence one session per direction.

    The replay window is libsrtp's 128 packets (RFC 3711 s3.3.2 asks for at least 64). A second
    `protect` of the same sequence number raises: resending with the same index under a stream
    cipher would reuse keystream (RFC 3711 s9.1), so libsrtp's `allow_repeat_tx` stays off; our
    RTP sender never retransmits.

    Packets go through a 1500-byte buffer: RTP up to 1356 bytes can be protected (the rest is
    room for the tag), datagrams up to 1500 bytes unprotected. Anything libsrtp refuses -
    authentication failure, replay, short or oversized input - raises `MediaError`.
    """

    __slots__ = ("_inbound", "_outbound")

    def __init__(self, *, local: SrtpKeys, remote: SrtpKeys) -> None:
        self._outbound = pylibsrtp.Session(_policy(local, pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
        self._inbound = pylibsrtp.Session(_policy(remote, pylibsrtp.Policy.SSRC_ANY_INBOUND))

    def protect(self, rtp: bytes) -> bytes:
        """The SRTP packet for plain RTP packet `rtp` (RFC 3711 s3.3)."""
        try:
            return self._outbound.protect(rtp)
        except (pylibsrtp.Error, ValueError) as exc:
            raise MediaError(f"SRTP protect failed: {exc}") from exc

    def unprotect(self, srtp: bytes) -> bytes:
        """The RTP packet inside received SRTP packet `srtp` (RFC 3711 s3.3)."""
        try:
            return self._inbound.unprotect(srtp)
        except (pylibsrtp.Error, ValueError) as exc:
            raise MediaError(f"SRTP unprotect failed: {exc}") from exc

    def protect_rtcp(self, rtcp: bytes) -> bytes:
        """The SRTCP packet for plain (compound) RTCP packet `rtcp` (RFC 3711 s3.4)."""
        try:
            return self._outbound.protect_rtcp(rtcp)
        except (pylibsrtp.Error, ValueError) as exc:
            raise MediaError(f"SRTCP protect failed: {exc}") from exc

    def unprotect_rtcp(self, srtcp: bytes) -> bytes:
        """The RTCP packet inside received SRTCP packet `srtcp` (RFC 3711 s3.4)."""
        try:
            return self._inbound.unprotect_rtcp(srtcp)
        except (pylibsrtp.Error, ValueError) as exc:
            raise MediaError(f"SRTCP unprotect failed: {exc}") from exc
