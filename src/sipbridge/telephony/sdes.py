"""SDES (RFC 4568): the `a=crypto` lines of SDP as the SRTP keys of `media/`, and back.

This is where SDP meets SRTP, so that neither `sdp/` nor `media/` has to know the other
(`tests/test_layers.py`): `sdp/` parses and writes the lines, `media/srtp.py` checks keys and
runs libsrtp, and this module pairs them. SDES declares keys per direction: each side's
`a=crypto` line carries the key *it sends with* (RFC 4568 s7.1). As answerer:

    chosen = choose_crypto(offer_media.crypto)         # None -> answer 488
    remote = keys_from_crypto(chosen)
    local = SrtpKeys.generate(remote.suite, secrets.token_bytes)
    answer_line = answer_crypto(chosen, local)
    context = SrtpContext(local=local, remote=remote)

As offerer, `offer_crypto` numbers our keys 1..n and `accept_answer` pairs the answer's line with
the key we offered under its tag. What `media/srtp.py` refuses (suites, MKIs, lifetimes, session
parameters) is listed there.
"""

from __future__ import annotations

from collections.abc import Sequence

from sipbridge import sdp
from sipbridge.media.errors import MediaError
from sipbridge.media.srtp import SrtpKeys, suite_name

__all__ = ["accept_answer", "answer_crypto", "choose_crypto", "keys_from_crypto", "offer_crypto"]


def keys_from_crypto(crypto: sdp.CryptoAttribute) -> SrtpKeys:
    """The keys an `a=crypto` line declares; `MediaError` if we cannot use it.

    The caller answers 488 when no offered line is usable (`choose_crypto` skips those).
    """
    return SrtpKeys.from_sdes(
        tag=crypto.tag,
        suite=crypto.suite,
        key_params=[(key.method, key.info) for key in crypto.keys],
        session_params=crypto.session_params,
    )


def choose_crypto(offered: Sequence[sdp.CryptoAttribute]) -> sdp.CryptoAttribute | None:
    """The first offered `a=crypto` line we can use, or None (then answer 488).

    The offer lists its lines in the offerer's order of preference (RFC 4568 s7.1.1), and we
    follow it; lines `keys_from_crypto` refuses are skipped (s7.1.2).
    """
    for crypto in offered:
        try:
            keys_from_crypto(crypto)
        except MediaError:
            continue
        return crypto
    return None


def answer_crypto(offered: sdp.CryptoAttribute, ours: SrtpKeys) -> sdp.CryptoAttribute:
    """Our answer to the chosen `offered` line: its tag and suite, our sending key (s7.1.2)."""
    if suite_name(offered.suite) != ours.suite:
        raise ValueError(f"answering {offered.suite} with {ours.suite} keys")
    return sdp.CryptoAttribute(
        tag=offered.tag,
        suite=offered.suite,
        keys=(sdp.CryptoKey(method="inline", info=ours.inline()),),
    )


def offer_crypto(keys: Sequence[SrtpKeys]) -> list[sdp.CryptoAttribute]:
    """`a=crypto` lines for our offer, most preferred first, tagged 1..n (s7.1.1)."""
    return [
        sdp.CryptoAttribute(
            tag=tag,
            suite=ours.suite,
            keys=(sdp.CryptoKey(method="inline", info=ours.inline()),),
        )
        for tag, ours in enumerate(keys, start=1)
    ]


def accept_answer(
    offered: Sequence[SrtpKeys], answer: sdp.CryptoAttribute
) -> tuple[SrtpKeys, SrtpKeys]:
    """(local, remote) keys once the answer picked one of our `offer_crypto(offered)` lines.

    `MediaError` if the answer's tag is not one we offered, its suite differs from that line's
    (RFC 4568 s7.1.3), or its key is one we cannot use.
    """
    if not 1 <= answer.tag <= len(offered):
        raise MediaError(f"answer a=crypto:{answer.tag} matches no offered tag")
    local = offered[answer.tag - 1]
    remote = keys_from_crypto(answer)
    if remote.suite != local.suite:
        raise MediaError(
            f"answer a=crypto:{answer.tag} is {remote.suite}, we offered {local.suite}"
        )
    return local, remote
