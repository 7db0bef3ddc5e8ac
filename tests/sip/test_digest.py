"""Digest authentication (RFC 3261 s22, RFC 2617, RFC 7616, RFC 8760): vectors, parser, pairs.

Client and server are paired in memory with fake time (STYLE.md point 7): `uac_and_uas()` builds
both, `exchange()` carries a challenge to the client and its answer back to the server.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import itertools
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.sip.digest import (
    ALGORITHM_PREFERENCE,
    MAX_AUTH_HEADER_LENGTH,
    MAX_AUTH_PARAMS,
    SUPPORTED_ALGORITHMS,
    AuthHeader,
    AuthOutcome,
    AuthParam,
    AuthResult,
    DigestChallenge,
    DigestClient,
    DigestCredentials,
    DigestServer,
    answer_challenge,
    digest_response,
    format_auth_header,
    parse_auth_header,
    quote_string,
)
from sipbridge.sip.errors import SipProtocolError

fuzz = settings(max_examples=300, deadline=None, database=None)

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "sip.example.com"
USERS = {"alice": "wonderland", "bob": "builder"}
URI = "sip:bob@example.com"
START = 1_700_000_000.0


class Clock:
    """Fake time: tests move it by hand and never sleep."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def counting_salt() -> Callable[[int], bytes]:
    """Deterministic, distinct salts instead of `secrets.token_bytes`."""
    counter = itertools.count(1)
    return lambda size: next(counter).to_bytes(size, "big")


def counting_cnonce() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"cnonce{next(counter)}"


def uac_and_uas(
    username: str = "alice",
    password: str = "wonderland",
    *,
    nonce_lifetime: float = 300.0,
    max_tracked_nonces: int = 4096,
) -> tuple[DigestClient, DigestServer]:
    client = DigestClient(username, password, new_cnonce=counting_cnonce())
    server = DigestServer(
        SECRET,
        nonce_lifetime=nonce_lifetime,
        max_tracked_nonces=max_tracked_nonces,
        random_bytes=counting_salt(),
    )
    return client, server


def check(
    server: DigestServer, header: str | None, now: float, method: str = "INVITE"
) -> AuthResult:
    return server.verify(header, method=method, realm=REALM, lookup_password=USERS.get, now=now)


def exchange(
    client: DigestClient,
    server: DigestServer,
    now: float,
    method: str = "INVITE",
    algorithms: Sequence[str] = ("SHA-256", "MD5"),
) -> tuple[str, AuthResult]:
    """Challenge, answer, verify: the credentials sent and the server's verdict."""
    challenges = server.challenge(REALM, now, algorithms=algorithms)
    header = client.answer(challenges, method, URI)
    return header, check(server, header, now, method)


def rebuilt(header: str, **changes: object) -> str:
    """`header` with some Digest credentials fields replaced."""
    credentials = DigestCredentials.parse(header)
    return dataclasses.replace(credentials, **changes).serialize()  # type: ignore[arg-type]


def bad_request(fn: Callable[..., object], *args: object, **kwargs: object) -> SipProtocolError:
    with pytest.raises(SipProtocolError) as info:
        fn(*args, **kwargs)
    assert (info.value.status, info.value.reason) == (400, "Bad Request")
    return info.value


# -- published test vectors -----------------------------------------------------------------------

# RFC 2617 s3.5: the example challenge and the Authorization header answering it
RFC2617_CHALLENGE = (
    'Digest realm="testrealm@host.com", qop="auth,auth-int", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)
RFC2617_AUTHORIZATION = (
    'Digest username="Mufasa",\r\n realm="testrealm@host.com",\r\n'
    ' nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",\r\n uri="/dir/index.html",\r\n qop=auth,\r\n'
    ' nc=00000001,\r\n cnonce="0a4f113b",\r\n response="6629fae49393a05397450978507c4ef1",\r\n'
    ' opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)


def test_rfc2617_md5_vector() -> None:
    # RFC 2617 s3.5: Mufasa / "Circle Of Life", GET /dir/index.html, qop=auth
    assert (
        digest_response(
            algorithm="MD5",
            username="Mufasa",
            realm="testrealm@host.com",
            password="Circle Of Life",
            method="GET",
            uri="/dir/index.html",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
            qop="auth",
            nc=1,
            cnonce="0a4f113b",
        )
        == "6629fae49393a05397450978507c4ef1"
    )


def test_rfc2617_example_headers() -> None:
    # RFC 2617 s3.5: the challenge offers auth and auth-int; the client picks auth
    challenge = DigestChallenge.parse(RFC2617_CHALLENGE)
    assert challenge.qop == ("auth", "auth-int")
    assert challenge.algorithm == "MD5"  # absent means MD5 (RFC 2617 s3.2.1)
    answer = answer_challenge(
        RFC2617_CHALLENGE,
        "GET",
        "/dir/index.html",
        "Mufasa",
        "Circle Of Life",
        cnonce="0a4f113b",
        nc=1,
    )
    assert DigestCredentials.parse(answer) == DigestCredentials.parse(RFC2617_AUTHORIZATION)
    assert DigestCredentials.parse(RFC2617_AUTHORIZATION) == DigestCredentials(
        username="Mufasa",
        realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        uri="/dir/index.html",
        response="6629fae49393a05397450978507c4ef1",
        cnonce="0a4f113b",
        opaque="5ccc069c403ebaf9f0171e9517f40e41",
        qop="auth",
        nc=1,
    )


# RFC 7616 s3.9.1: the challenge, folded over lines as printed there
RFC7616_CHALLENGE = (
    'Digest\r\n    realm="http-auth@example.org",\r\n    qop="auth, auth-int",\r\n'
    '    algorithm=SHA-256,\r\n    nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",\r\n'
    '    opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


def test_rfc7616_sha256_vector() -> None:
    # RFC 7616 s3.9.1: Mufasa / "Circle of Life", GET /dir/index.html, SHA-256, qop=auth
    assert (
        digest_response(
            algorithm="SHA-256",
            username="Mufasa",
            realm="http-auth@example.org",
            password="Circle of Life",
            method="GET",
            uri="/dir/index.html",
            nonce=RFC7616_NONCE,
            qop="auth",
            nc=1,
            cnonce=RFC7616_CNONCE,
        )
        == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    )


def test_rfc7616_md5_vector() -> None:
    # RFC 7616 s3.9.1: the same request answered with MD5
    assert (
        digest_response(
            algorithm="MD5",
            username="Mufasa",
            realm="http-auth@example.org",
            password="Circle of Life",
            method="GET",
            uri="/dir/index.html",
            nonce=RFC7616_NONCE,
            qop="auth",
            nc=1,
            cnonce=RFC7616_CNONCE,
        )
        == "8ca523f5e9506fed4657c9700eebdbec"
    )


def test_rfc7616_example_headers() -> None:
    # RFC 7616 s3.9.1: the folded challenge parses; the answer echoes algorithm and opaque
    challenge = DigestChallenge.parse(RFC7616_CHALLENGE)
    assert challenge == DigestChallenge(
        realm="http-auth@example.org",
        nonce=RFC7616_NONCE,
        opaque=RFC7616_OPAQUE,
        algorithm="SHA-256",
        qop=("auth", "auth-int"),
    )
    answer = DigestCredentials.parse(
        answer_challenge(
            RFC7616_CHALLENGE,
            "GET",
            "/dir/index.html",
            "Mufasa",
            "Circle of Life",
            cnonce=RFC7616_CNONCE,
        )
    )
    assert answer == DigestCredentials(
        username="Mufasa",
        realm="http-auth@example.org",
        nonce=RFC7616_NONCE,
        uri="/dir/index.html",
        response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        algorithm="SHA-256",
        cnonce=RFC7616_CNONCE,
        opaque=RFC7616_OPAQUE,
        qop="auth",
        nc=1,
    )


# -- client and server in memory ------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", SUPPORTED_ALGORITHMS)
def test_success_with_qop(algorithm: str) -> None:
    client, server = uac_and_uas()
    header, result = exchange(client, server, START, algorithms=(algorithm,))
    assert result == AuthResult(outcome=AuthOutcome.OK, username="alice", algorithm=algorithm)
    assert result.ok and not result.stale
    sent = DigestCredentials.parse(header)
    assert (sent.qop, sent.nc, sent.cnonce, sent.algorithm) == ("auth", 1, "cnonce1", algorithm)
    assert server.tracked_nonces == 1


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_success_without_qop_and_nonce_reuse(algorithm: str) -> None:
    # RFC 2617 s3.2.2 keeps RFC 2069 clients working: no qop, no nc, no cnonce
    clock = Clock()
    client, server = uac_and_uas()
    offered = DigestChallenge.parse(server.challenge(REALM, clock.now, algorithms=(algorithm,))[0])
    plain = dataclasses.replace(offered, qop=()).serialize()
    header = client.answer([plain], "REGISTER", URI)
    sent = DigestCredentials.parse(header)
    assert (sent.qop, sent.nc, sent.cnonce) == (None, None, None)
    assert check(server, header, clock.now, "REGISTER").ok
    # without qop there is no counter: the nonce may be reused for its whole lifetime
    assert check(server, header, clock.advance(299), "REGISTER").ok
    assert client.authorization("REGISTER", URI) == header
    assert server.tracked_nonces == 0
    assert check(server, header, clock.advance(2), "REGISTER").outcome is AuthOutcome.STALE


def test_client_prefers_sha256_whatever_the_order() -> None:
    # RFC 8760 s2.4: SHA-256 is offered first, but a client must not depend on the order
    client, server = uac_and_uas()
    challenges = server.challenge(REALM, START, algorithms=("MD5", "SHA-256"))
    header = client.answer(challenges, "INVITE", URI)
    assert DigestCredentials.parse(header).algorithm == "SHA-256"
    assert client.challenge is not None and client.challenge.algorithm == "SHA-256"
    assert check(server, header, START).ok


def test_server_offers_sha256_then_md5() -> None:
    _, server = uac_and_uas()
    values = server.challenge(REALM, START)
    offered = [DigestChallenge.parse(value) for value in values]
    assert [c.algorithm for c in offered] == ["SHA-256", "MD5"]
    assert all(c.qop == ("auth",) and c.realm == REALM and not c.stale for c in offered)
    assert offered[0].nonce != offered[1].nonce
    assert offered[0].opaque == offered[1].opaque
    assert values[0].startswith('Digest realm="sip.example.com", nonce="')
    assert values[0].endswith(', algorithm=SHA-256, qop="auth"')


def test_client_skips_challenges_it_cannot_answer() -> None:
    client, server = uac_and_uas()
    good = server.challenge(REALM, START, algorithms=("MD5",))[0]
    others = [
        'Basic realm="x"',
        "Digest realm=unterminated, nonce=",
        'Digest realm="r", nonce="n", algorithm=SHA-512-256, qop="auth"',
        'Digest realm="r", nonce="n", qop="auth-int"',
        'Digest realm="r", nonce="n", algorithm=MD5-sess',
    ]
    header = client.answer([*others, good], "INVITE", URI)
    assert check(server, header, START).ok
    with pytest.raises(SipProtocolError) as info:
        client.answer(others, "INVITE", URI)
    assert info.value.status == 401


def test_client_counts_nc_per_nonce() -> None:
    client, server = uac_and_uas()
    assert client.challenge is None
    assert client.authorization("INVITE", URI) is None
    challenges = server.challenge(REALM, START)
    first = DigestCredentials.parse(client.answer(challenges, "INVITE", URI))
    second = client.authorization("BYE", URI)
    assert second is not None
    assert check(server, second, START, "BYE").ok
    again = DigestCredentials.parse(client.answer(challenges, "INVITE", URI))
    fresh = DigestCredentials.parse(client.answer(server.challenge(REALM, START), "INVITE", URI))
    assert [first.nc, DigestCredentials.parse(second).nc, again.nc, fresh.nc] == [1, 2, 3, 1]
    assert first.cnonce != again.cnonce  # a new cnonce per request
    following = client.authorization("INVITE", URI)
    assert following is not None and DigestCredentials.parse(following).nc == 2


def test_default_cnonce_is_random() -> None:
    client = DigestClient("alice", "wonderland")
    server = DigestServer(SECRET)
    challenges = server.challenge(REALM, START)
    first = DigestCredentials.parse(client.answer(challenges, "INVITE", URI))
    second = DigestCredentials.parse(client.answer(challenges, "INVITE", URI))
    assert first.cnonce and second.cnonce and first.cnonce != second.cnonce
    assert len(first.nonce) == 43
    for header in (first, second):
        assert check(server, header.serialize(), START).ok


def test_wrong_password() -> None:
    client, server = uac_and_uas(password="not the password")
    _, result = exchange(client, server, START)
    assert result.outcome is AuthOutcome.WRONG_RESPONSE
    assert (result.username, result.algorithm) == ("alice", "SHA-256")
    assert not result.ok and not result.stale


def test_changed_method_or_uri_does_not_match() -> None:
    client, server = uac_and_uas()
    header, _ = exchange(client, server, START, method="INVITE")
    bye = client.authorization("INVITE", URI)
    assert bye is not None
    assert check(server, bye, START, "BYE").outcome is AuthOutcome.WRONG_RESPONSE
    client, server = uac_and_uas()  # (the wrong answer spent that nonce: a fresh one)
    header, _ = exchange(client, server, START, method="INVITE")
    moved = rebuilt(header, uri="sip:mallory@example.com", nc=5)
    assert check(server, moved, START).outcome is AuthOutcome.WRONG_RESPONSE


def test_a_wrong_answer_spends_its_nonce() -> None:
    """One guess per challenge (issue 17): after a wrong answer (or an unknown user) the nonce
    is refused even with the right password, and the client is challenged afresh."""
    for username, password in (("alice", "guess"), ("mallory", "wonderland")):
        client, server = uac_and_uas(username=username, password=password)
        challenges = server.challenge(REALM, START)
        wrong = check(server, client.answer(challenges, "INVITE", URI), START)
        assert not wrong.ok
        right = DigestClient("alice", "wonderland")
        again = check(server, right.answer(challenges, "INVITE", URI), START + 1)
        assert again.outcome is AuthOutcome.BAD_NONCE and not again.stale
        assert again.detail == "nonce spent by a wrong answer"
        fresh = right.answer(server.challenge(REALM, START + 2), "INVITE", URI)
        assert check(server, fresh, START + 2).ok


def test_spent_nonces_are_bounded() -> None:
    client, server = uac_and_uas(password="guess", max_tracked_nonces=2)
    first = server.challenge(REALM, START)
    check(server, client.answer(first, "INVITE", URI), START)
    for _ in range(2):  # two more spent nonces push the first out
        check(server, client.answer(server.challenge(REALM, START), "INVITE", URI), START)
    right = DigestClient("alice", "wonderland")
    assert check(server, right.answer(first, "INVITE", URI), START).ok


def test_unknown_user() -> None:
    client, server = uac_and_uas(username="mallory", password="guess")
    _, result = exchange(client, server, START)
    assert result.outcome is AuthOutcome.UNKNOWN_USER
    assert result.username == "mallory"


def test_response_compares_without_case() -> None:
    client, server = uac_and_uas()
    challenges = server.challenge(REALM, START)
    header = rebuilt(client.answer(challenges, "INVITE", URI))
    sent = DigestCredentials.parse(header)
    assert check(server, rebuilt(header, response=sent.response.upper()), START).ok


def test_non_ascii_response_is_just_wrong() -> None:
    client, server = uac_and_uas()
    header = client.answer(server.challenge(REALM, START), "INVITE", URI)
    odd = rebuilt(header, response="é" * 64)
    assert check(server, odd, START).outcome is AuthOutcome.WRONG_RESPONSE


def nonce_with(server_nonce: str, flip: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(server_nonce + "="))
    raw[flip] ^= 1
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda nonce: "A" * 43, id="right-shape-random"),
        pytest.param(lambda nonce: nonce[:-1], id="too-short"),
        pytest.param(lambda nonce: nonce + "A", id="too-long"),
        pytest.param(lambda nonce: nonce[:20] + "+" + nonce[21:], id="not-base64url"),
        pytest.param(lambda nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093", id="not-ours"),
        pytest.param(lambda nonce: nonce_with(nonce, 0), id="time-changed"),
        pytest.param(lambda nonce: nonce_with(nonce, 10), id="salt-changed"),
        pytest.param(lambda nonce: nonce_with(nonce, 31), id="mac-changed"),
    ],
)
def test_forged_nonce(forge: Callable[[str], str]) -> None:
    # the attacker knows the password here; only the nonce is not ours
    client, server = uac_and_uas()
    offered = DigestChallenge.parse(server.challenge(REALM, START)[0])
    forged = dataclasses.replace(offered, nonce=forge(offered.nonce)).serialize()
    header = client.answer([forged], "INVITE", URI)
    result = check(server, header, START)
    assert result.outcome is AuthOutcome.BAD_NONCE
    assert not result.stale


def test_nonce_spelled_another_way_is_refused() -> None:
    # the base64 decoder ignores the spare bits of the last character; we do not
    client, server = uac_and_uas()
    offered = DigestChallenge.parse(server.challenge(REALM, START)[0])
    last = offered.nonce[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = offered.nonce[:-1] + alphabet[alphabet.index(last) ^ 1]
    assert base64.urlsafe_b64decode(twin + "=") == base64.urlsafe_b64decode(offered.nonce + "=")
    header = client.answer([dataclasses.replace(offered, nonce=twin).serialize()], "INVITE", URI)
    assert check(server, header, START).outcome is AuthOutcome.BAD_NONCE


def test_nonce_from_another_secret_realm_or_algorithm() -> None:
    client, server = uac_and_uas()
    other = DigestServer(b"another secret of sixteen bytes+")
    header = client.answer(other.challenge(REALM, START), "INVITE", URI)
    assert check(server, header, START).outcome is AuthOutcome.BAD_NONCE
    # a nonce issued for another realm, presented for ours
    elsewhere = DigestChallenge.parse(server.challenge("other.example.com", START)[0])
    moved = dataclasses.replace(elsewhere, realm=REALM).serialize()
    header = client.answer([moved], "INVITE", URI)
    assert check(server, header, START).outcome is AuthOutcome.BAD_NONCE
    # an MD5 nonce answered with SHA-256: the algorithm is bound to the nonce
    md5 = DigestChallenge.parse(server.challenge(REALM, START, algorithms=("MD5",))[0])
    upgraded = dataclasses.replace(md5, algorithm="SHA-256").serialize()
    header = client.answer([upgraded], "INVITE", URI)
    result = check(server, header, START)
    assert result.outcome is AuthOutcome.BAD_NONCE
    assert result.algorithm == "SHA-256"


def test_algorithm_never_offered() -> None:
    _, server = uac_and_uas()
    offered = DigestChallenge.parse(server.challenge(REALM, START)[0])
    header = DigestCredentials(
        username="alice",
        realm=REALM,
        nonce=offered.nonce,
        uri=URI,
        response="0" * 64,
        algorithm="SHA-512-256",
        cnonce="c",
        qop="auth",
        nc=1,
    ).serialize()
    result = check(server, header, START)
    assert result.outcome is AuthOutcome.BAD_NONCE
    assert "SHA-512-256" in result.detail


def test_opaque_must_come_back_unchanged_if_at_all() -> None:
    client, server = uac_and_uas()
    header = client.answer(server.challenge(REALM, START), "INVITE", URI)
    assert check(server, rebuilt(header, opaque="changed"), START).outcome is AuthOutcome.BAD_NONCE
    # the nonce authenticates itself, so a client that drops opaque still gets in
    assert check(server, rebuilt(header, opaque=None), START).ok


def test_nonce_expiry_then_stale_rechallenge() -> None:
    clock = Clock()
    client, server = uac_and_uas()
    challenges = server.challenge(REALM, clock.now)
    header = client.answer(challenges, "INVITE", URI)
    assert check(server, header, clock.advance(300)).ok  # the lifetime is inclusive
    later = client.authorization("INVITE", URI)
    assert later is not None
    stale = check(server, later, clock.advance(0.5))
    assert stale.outcome is AuthOutcome.STALE and stale.stale
    # RFC 2617 s3.2.1: re-challenge with stale=TRUE; the client answers without asking the user
    rechallenge = server.challenge(REALM, clock.now, stale=True)
    assert all(value.endswith(", stale=TRUE") for value in rechallenge)
    assert DigestChallenge.parse(rechallenge[0]).stale
    header = client.answer(rechallenge, "INVITE", URI)
    assert DigestCredentials.parse(header).nc == 1
    assert check(server, header, clock.now).ok


def test_expired_nonce_with_wrong_password_is_not_stale() -> None:
    # stale=TRUE would tell the client its password was right (RFC 2617 s3.2.1)
    clock = Clock()
    client, server = uac_and_uas(password="wrong")
    header = client.answer(server.challenge(REALM, clock.now), "INVITE", URI)
    assert check(server, header, clock.advance(1000)).outcome is AuthOutcome.WRONG_RESPONSE


def test_nonce_from_the_future_is_stale() -> None:
    # the clock stepped back by more than the lifetime: hand out a fresh nonce
    client, server = uac_and_uas()
    header = client.answer(server.challenge(REALM, START), "INVITE", URI)
    assert check(server, header, START - 301).outcome is AuthOutcome.STALE


def test_custom_lifetime() -> None:
    client, server = uac_and_uas(nonce_lifetime=10)
    header = client.answer(server.challenge(REALM, START), "INVITE", URI)
    assert check(server, header, START + 11).outcome is AuthOutcome.STALE


def test_replayed_nc_refused_increasing_nc_accepted() -> None:
    client, server = uac_and_uas()
    first = client.answer(server.challenge(REALM, START), "INVITE", URI)
    assert check(server, first, START).ok
    replay = check(server, first, START + 1)
    assert replay.outcome is AuthOutcome.REPLAY and replay.stale
    second = client.authorization("INVITE", URI)
    later = client.authorization("INVITE", URI)
    assert second is not None and later is not None
    assert check(server, later, START + 2).ok  # nc=3: gaps are fine
    assert check(server, second, START + 2).outcome is AuthOutcome.REPLAY  # nc=2 after nc=3
    # bumping nc without knowing the password does not help: nc is part of the hash (and the
    # wrong answer spends the nonce)
    bumped = rebuilt(first, nc=9)
    assert check(server, bumped, START).outcome is AuthOutcome.WRONG_RESPONSE


def test_replay_map_is_bounded() -> None:
    clock = Clock()
    _, server = uac_and_uas(max_tracked_nonces=2)
    clients = [DigestClient("alice", "wonderland") for _ in range(3)]
    first_headers = []
    for client in clients:
        header = client.answer(server.challenge(REALM, clock.now), "INVITE", URI)
        assert check(server, header, clock.now).ok
        first_headers.append(header)
        clock.advance(1)
    assert server.tracked_nonces == 2
    # the oldest nonce was forgotten: rather than trust any nc on it, it is stale, even nc=1
    assert check(server, first_headers[0], clock.now).outcome is AuthOutcome.STALE
    assert check(server, clients[0].authorization("INVITE", URI), clock.now).stale
    # the newer nonces are still tracked
    assert check(server, first_headers[2], clock.now).outcome is AuthOutcome.REPLAY
    assert check(server, clients[2].authorization("INVITE", URI), clock.now).ok


def test_replay_map_drops_expired_nonces() -> None:
    clock = Clock()
    client, server = uac_and_uas()
    for _ in range(3):
        header = client.answer(server.challenge(REALM, clock.now), "INVITE", URI)
        assert check(server, header, clock.now).ok
    assert server.tracked_nonces == 3
    clock.advance(301)
    header = client.answer(server.challenge(REALM, clock.now), "INVITE", URI)
    assert check(server, header, clock.now).ok
    assert server.tracked_nonces == 1


def test_replay_map_full_of_newer_nonces_drops_an_older_newcomer() -> None:
    # a nonce older than everything tracked enters and leaves at once; its reuse is then stale
    clock = Clock()
    client, server = uac_and_uas(max_tracked_nonces=1)
    old = client.answer(server.challenge(REALM, clock.now), "INVITE", URI)
    clock.advance(10)
    new = DigestClient("alice", "wonderland", new_cnonce=lambda: "n")
    newer = new.answer(server.challenge(REALM, clock.now), "INVITE", URI)
    assert check(server, newer, clock.now).ok
    assert check(server, old, clock.now).ok
    assert server.tracked_nonces == 1
    again = client.authorization("INVITE", URI)
    assert check(server, again, clock.now).outcome is AuthOutcome.STALE
    follow_up = new.authorization("INVITE", URI)
    assert check(server, follow_up, clock.now).ok


def test_nc_without_qop_is_ignored() -> None:
    # RFC 2617 s3.2.2 forbids nc without qop; a client that sends it anyway is not tracked
    _, server = uac_and_uas()
    offered = DigestChallenge.parse(server.challenge(REALM, START)[0])
    response = digest_response(
        algorithm="SHA-256",
        username="alice",
        realm=REALM,
        password="wonderland",
        method="INVITE",
        uri=URI,
        nonce=offered.nonce,
    )
    header = DigestCredentials(
        username="alice",
        realm=REALM,
        nonce=offered.nonce,
        uri=URI,
        response=response,
        algorithm="SHA-256",
        nc=7,
    ).serialize()
    assert check(server, header, START).ok
    assert check(server, header, START).ok
    assert server.tracked_nonces == 0


def test_realm_mismatch() -> None:
    client, server = uac_and_uas()
    header = client.answer(server.challenge("other.example.com", START), "INVITE", URI)
    result = check(server, header, START)
    assert result.outcome is AuthOutcome.MISSING
    assert result.username == "alice"
    assert "other.example.com" in result.detail


def test_missing_credentials_and_other_schemes() -> None:
    _, server = uac_and_uas()
    assert check(server, None, START) == AuthResult(
        outcome=AuthOutcome.MISSING, detail="no credentials"
    )
    for value in ("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==", "Basic", ' Bearer\r\n token="x"'):
        result = check(server, value, START)
        assert result.outcome is AuthOutcome.MISSING, value
        assert "not supported" in result.detail


def test_qop_not_offered_is_bad_request() -> None:
    client, server = uac_and_uas()
    header = client.answer(server.challenge(REALM, START), "INVITE", URI)
    error = bad_request(check, server, rebuilt(header, qop="auth-int"), START)
    assert "auth-int" in error.detail


def test_case_insensitive_names() -> None:
    _, server = uac_and_uas()
    challenge = DigestChallenge.parse(server.challenge(REALM, START, algorithms=("MD5",))[0])
    response = digest_response(
        algorithm="MD5",
        username="alice",
        realm=REALM,
        password="wonderland",
        method="INVITE",
        uri=URI,
        nonce=challenge.nonce,
        qop="auth",
        nc=1,
        cnonce="abc",
    )
    header = (
        f'DIGEST USERNAME="alice", Realm="{REALM}", NONCE="{challenge.nonce}", Uri="{URI}", '
        f'RESPONSE="{response.upper()}", Algorithm=md5, QOP="AUTH", NC=00000001, CNonce="abc"'
    )
    assert check(server, header, START).ok
    parsed = DigestCredentials.parse(header)
    assert (parsed.algorithm, parsed.qop) == ("MD5", "auth")
    odd = DigestChallenge.parse('digest REALM="r", Nonce="n", STALE=true, Algorithm=sha-256-SESS')
    assert (odd.stale, odd.algorithm) == (True, "SHA-256-sess")
    assert DigestChallenge.parse('Digest realm="r", nonce="n", stale=yes').stale is False
    assert DigestChallenge.parse('Digest realm="r", nonce="n", algorithm=Foo').algorithm == "Foo"
    assert parse_auth_header('X a="1"').get("A") == "1"
    assert parse_auth_header('X a="1"').get("b") is None


# -- parsing and serialising ----------------------------------------------------------------------


def test_parse_generic_header() -> None:
    header = parse_auth_header(' Digest  a=b ,C="x y"\t,\r\n d = "" ')
    assert header == AuthHeader(
        scheme="Digest",
        params=(
            AuthParam(name="a", value="b"),
            AuthParam(name="c", value="x y", quoted=True),
            AuthParam(name="d", value="", quoted=True),
        ),
    )
    assert format_auth_header(header) == 'Digest a=b, c="x y", d=""'
    assert parse_auth_header(format_auth_header(header)) == header


def test_escapes_in_quoted_strings() -> None:
    # RFC 3261 s25.1: quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)
    header = parse_auth_header(r'Digest realm="a \"quoted\" realm\\", nonce="\n\o"')
    assert header.get("realm") == 'a "quoted" realm\\'
    assert header.get("nonce") == "no"
    assert quote_string('a "b" \\c') == r'"a \"b\" \\c"'
    assert quote_string("tab\there\x01\x7f") == '"tab\there\\\x01\\\x7f"'
    assert parse_auth_header("X p=" + quote_string("tab\there\x01\x7f")).get("p") == (
        "tab\there\x01\x7f"
    )
    assert quote_string("naïve ☎") == '"naïve ☎"'  # UTF8-NONASCII is qdtext
    folded = parse_auth_header('Digest realm="one\r\n two"')
    assert folded.get("realm") == "one two"  # RFC 3261 s7.3.1: a fold reads as SP
    for unrepresentable in ("a\rb", "a\nb", "\ud800"):
        with pytest.raises(ValueError):
            quote_string(unrepresentable)


def test_typed_round_trips() -> None:
    challenge = DigestChallenge(
        realm='we "quote" \\ this',
        nonce="n/o+n=ce",
        opaque="op",
        algorithm="SHA-256-sess",
        qop=("auth", "auth-int"),
        stale=True,
        domain="sip:example.com sip:example.org",
    )
    text = challenge.serialize()
    assert text == (
        r'Digest realm="we \"quote\" \\ this", domain="sip:example.com sip:example.org", '
        'nonce="n/o+n=ce", opaque="op", algorithm=SHA-256-sess, qop="auth,auth-int", stale=TRUE'
    )
    assert DigestChallenge.parse(text) == challenge
    minimal = DigestChallenge(realm="r", nonce="n")
    assert minimal.serialize() == 'Digest realm="r", nonce="n", algorithm=MD5'
    assert DigestChallenge.parse(minimal.serialize()) == minimal
    credentials = DigestCredentials(
        username="al\\ice",
        realm="r",
        nonce="n",
        uri="sip:a@b;transport=tcp",
        response="abc",
        algorithm="MD5-sess",
        cnonce="c",
        opaque="o",
        qop="auth",
        nc=0xFFFFFFFF,
    )
    text = credentials.serialize()
    assert text.endswith("qop=auth, nc=ffffffff")
    assert DigestCredentials.parse(text) == credentials
    assert DigestCredentials.parse(text.replace("ffffffff", "FFFFFFFF")) == credentials


def test_serialise_refuses_what_the_grammar_cannot_carry() -> None:
    header = AuthHeader(scheme="Digest", params=(AuthParam(name="a", value="b"),))
    for bad in (
        dataclasses.replace(header, scheme="Dig est"),
        dataclasses.replace(header, params=()),
        dataclasses.replace(header, params=(AuthParam(name="a=", value="b"),)),
        dataclasses.replace(header, params=(AuthParam(name="a", value="b c"),)),
        dataclasses.replace(header, params=(AuthParam(name="a", value="\n", quoted=True),)),
    ):
        with pytest.raises(ValueError):
            format_auth_header(bad)
    with pytest.raises(ValueError):
        DigestChallenge(realm="r", nonce="n", qop=("auth", "")).serialize()
    with pytest.raises(ValueError):
        DigestChallenge(realm="r", nonce="n", algorithm="MD 5").serialize()
    with pytest.raises(ValueError):
        DigestCredentials(
            username="u", realm="r", nonce="n", uri="u", response="x", nc=0x1_0000_0000
        ).serialize()


LONG = "Digest " + ", ".join(f"p{i}=v" for i in range(MAX_AUTH_HEADER_LENGTH // 5))
MANY = "Digest " + ", ".join(f"p{i}=v" for i in range(MAX_AUTH_PARAMS + 1))
CREDENTIALS = 'Digest username="u", realm="r", nonce="n", uri="sip:x", response="0"'


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("Digest", id="scheme-only"),
        pytest.param("Digest ", id="scheme-and-space"),
        pytest.param('Digest username="alice', id="unterminated-quote"),
        pytest.param('Digest username="alice\\', id="unterminated-after-backslash"),
        pytest.param('username="alice", realm="r"', id="no-scheme"),
        pytest.param('"Digest" username="alice"', id="quoted-scheme"),
        pytest.param("Digest username=", id="no-value"),
        pytest.param("Digest username", id="no-equals"),
        pytest.param("Digest =x", id="no-name"),
        pytest.param('Digest username="a" realm="b"', id="no-comma"),
        pytest.param('Digest username="a",, realm="b"', id="empty-element"),
        pytest.param('Digest username="a",', id="trailing-comma"),
        pytest.param("Digest a=b c", id="token-with-space"),
        pytest.param("Digest a=b=c", id="two-equals"),
        pytest.param('Digest a="x", A="y"', id="duplicate-any-case"),
        pytest.param('Digest a="x\x00y"', id="raw-control"),
        pytest.param('Digest a="x\x7fy"', id="raw-del"),
        pytest.param('Digest a="x\ud800"', id="surrogate"),
        pytest.param('Digest a="x\r\ny"', id="crlf-without-fold"),
        pytest.param('Digest a="x\ry"', id="bare-cr"),
        pytest.param('Digest a="x\ny"', id="bare-lf"),
        pytest.param('Digest a="x\\\ny"', id="escaped-lf"),
        pytest.param('Digest a="x\\éy"', id="escaped-non-ascii"),
        pytest.param("Digest a=b\r\n", id="trailing-crlf"),
        pytest.param("Digest\r\na=b", id="crlf-without-wsp"),
        pytest.param(LONG, id="absurdly-long"),
        pytest.param(MANY, id="too-many-params"),
    ],
)
def test_malformed_headers(value: str) -> None:
    _, server = uac_and_uas()
    for parse in (parse_auth_header, DigestChallenge.parse, DigestCredentials.parse):
        bad_request(parse, value)
    bad_request(check, server, value, START)


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        pytest.param('Basic realm="r", nonce="n"', "Digest scheme", id="other-scheme"),
        pytest.param('Digest nonce="n"', "'realm'", id="no-realm"),
        pytest.param('Digest realm="r"', "'nonce'", id="no-nonce"),
    ],
)
def test_challenge_missing_parts(value: str, complaint: str) -> None:
    assert complaint in bad_request(DigestChallenge.parse, value).detail


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        pytest.param(CREDENTIALS.replace("Digest", "Other"), "Digest scheme", id="other-scheme"),
        pytest.param(CREDENTIALS.replace('username="u", ', ""), "'username'", id="no-username"),
        pytest.param(CREDENTIALS.replace('realm="r", ', ""), "'realm'", id="no-realm"),
        pytest.param(CREDENTIALS.replace('nonce="n", ', ""), "'nonce'", id="no-nonce"),
        pytest.param(CREDENTIALS.replace('uri="sip:x", ', ""), "'uri'", id="no-uri"),
        pytest.param(CREDENTIALS.replace(', response="0"', ""), "'response'", id="no-response"),
        pytest.param(CREDENTIALS + ", qop=auth", "nc and cnonce", id="qop-without-nc"),
        pytest.param(CREDENTIALS + ", qop=auth, nc=00000001", "nc and cnonce", id="no-cnonce"),
        pytest.param(
            CREDENTIALS + ', qop=auth, nc=00000001, cnonce=""', "nc and cnonce", id="empty-cnonce"
        ),
        pytest.param(CREDENTIALS + ", nc=1", "8 hex", id="short-nc"),
        pytest.param(CREDENTIALS + ", nc=0000000g", "8 hex", id="non-hex-nc"),
        pytest.param(CREDENTIALS + ", nc=000000001", "8 hex", id="long-nc"),
        pytest.param(CREDENTIALS + ", nc=00000000", "00000001", id="zero-nc"),
        pytest.param(CREDENTIALS + ", algorithm=MD5-sess", "cnonce", id="sess-without-cnonce"),
    ],
)
def test_credentials_missing_parts(value: str, complaint: str) -> None:
    _, server = uac_and_uas()
    assert complaint in bad_request(DigestCredentials.parse, value).detail
    if not value.startswith("Other"):
        assert (
            complaint
            in bad_request(check, server, value.replace('"r"', f'"{REALM}"'), START).detail
        )


def test_header_too_long_is_refused_before_the_scheme() -> None:
    _, server = uac_and_uas()
    bad_request(check, server, "Basic " + "x" * MAX_AUTH_HEADER_LENGTH, START)


def test_limits_are_inclusive() -> None:
    params = ", ".join(f"p{i}=v" for i in range(MAX_AUTH_PARAMS))
    assert len(parse_auth_header("X " + params).params) == MAX_AUTH_PARAMS
    padded = "X a=" + quote_string("v" * (MAX_AUTH_HEADER_LENGTH - 6))
    assert len(padded) == MAX_AUTH_HEADER_LENGTH
    assert parse_auth_header(padded).get("a") == "v" * (MAX_AUTH_HEADER_LENGTH - 6)


# -- argument checks ------------------------------------------------------------------------------


def test_server_configuration_checks() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        DigestServer(b"short")
    with pytest.raises(ValueError, match="positive"):
        DigestServer(SECRET, nonce_lifetime=0)
    with pytest.raises(ValueError, match="at least 1"):
        DigestServer(SECRET, max_tracked_nonces=0)
    server = DigestServer(SECRET)
    with pytest.raises(ValueError, match="at least one"):
        server.challenge(REALM, START, algorithms=())
    with pytest.raises(ValueError, match="unsupported"):
        server.challenge(REALM, START, algorithms=("SHA-512-256",))
    assert DigestChallenge.parse(
        server.challenge(REALM, START, algorithms=("md5",))[0]
    ).algorithm == ("MD5")
    with pytest.raises(ValueError, match="8 bytes"):
        DigestServer(SECRET, random_bytes=lambda n: b"x").challenge(REALM, START)


def test_digest_response_argument_checks() -> None:
    respond = functools.partial(
        digest_response, username="u", realm="r", password="p", method="INVITE", uri="sip:x"
    )
    with pytest.raises(ValueError, match="unsupported digest algorithm"):
        respond(algorithm="SHA-1", nonce="n")
    with pytest.raises(ValueError, match="cnonce"):
        respond(algorithm="MD5-sess", nonce="n")
    with pytest.raises(ValueError, match="unsupported qop"):
        respond(algorithm="MD5", qop="auth-int", nc=1, cnonce="c", nonce="n")
    with pytest.raises(ValueError, match="nc and cnonce"):
        respond(algorithm="MD5", qop="auth", cnonce="c", nonce="n")
    with pytest.raises(ValueError, match="nc and cnonce"):
        respond(algorithm="MD5", qop="auth", nc=1, nonce="n")
    with pytest.raises(ValueError, match="outside"):
        respond(algorithm="MD5", qop="auth", nc=0, cnonce="c", nonce="n")
    # the -sess HA1 folds in nonce and cnonce (RFC 2617 s3.2.2.2)
    plain = respond(algorithm="sha-256", qop="auth", nc=1, cnonce="c", nonce="n")
    sess = respond(algorithm="SHA-256-sess", qop="auth", nc=1, cnonce="c", nonce="n")
    assert len(plain) == len(sess) == 64 and plain != sess


@pytest.mark.parametrize(
    ("challenge", "status", "complaint"),
    [
        pytest.param("Digest realm=", 400, "token or quoted string", id="malformed"),
        pytest.param('Digest realm="r", nonce="n", algorithm=SHA-1', 401, "SHA-1", id="sha1"),
        pytest.param('Digest realm="r", nonce="n", qop="auth-int"', 401, "qop", id="auth-int"),
        pytest.param(
            'Digest realm="r", nonce="n", algorithm=MD5-sess', 401, "no cnonce", id="sess"
        ),
    ],
)
def test_answer_challenge_refusals(challenge: str, status: int, complaint: str) -> None:
    with pytest.raises(SipProtocolError) as info:
        answer_challenge(challenge, "INVITE", URI, "alice", "wonderland", cnonce="c")
    assert info.value.status == status
    assert complaint in info.value.detail


def test_preference_covers_every_supported_algorithm() -> None:
    assert sorted(ALGORITHM_PREFERENCE) == sorted(SUPPORTED_ALGORITHMS)


# -- properties -----------------------------------------------------------------------------------

# Text that reaches deep into the grammar: scheme-like words, separators, quotes, escapes, folds.
grammar_text = st.lists(
    st.sampled_from(
        [
            *("Digest", " ", "\t", "\r\n ", "\r", "\n", ",", "=", '"', "\\", "realm", "nonce"),
            *("a", "username", "qop", "auth", "nc", "00000001", "é", "\x00", "MD5", "SHA-256"),
        ]
    ),
    max_size=40,
).map("".join)
any_text = st.one_of(st.text(max_size=200), grammar_text, grammar_text.map("Digest ".__add__))


@fuzz
@given(any_text)
def test_parsers_only_return_or_refuse(value: str) -> None:
    # STYLE.md point 8: the only outcomes are "parses" and "raises SipProtocolError"
    for parse in (parse_auth_header, DigestChallenge.parse, DigestCredentials.parse):
        try:
            parse(value)
        except SipProtocolError as error:
            assert error.status == 400


@fuzz
@given(any_text)
def test_verify_only_decides_or_refuses(value: str) -> None:
    _, server = uac_and_uas()
    try:
        result = check(server, value, START)
    except SipProtocolError as error:
        assert error.status == 400
    else:
        assert result.outcome is not AuthOutcome.OK


quotable = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"),
    max_size=30,
)
token = st.text(alphabet="abcXYZ019-.!%*_+`'~", min_size=1, max_size=10)
params = st.lists(
    st.tuples(token.map(str.lower), st.booleans(), quotable, token),
    min_size=1,
    max_size=MAX_AUTH_PARAMS,
    unique_by=lambda item: item[0],
)


@fuzz
@given(token, params)
def test_generic_round_trip(scheme: str, items: list[tuple[str, bool, str, str]]) -> None:
    header = AuthHeader(
        scheme=scheme,
        params=tuple(
            AuthParam(name=name, value=text if quoted else bare, quoted=quoted)
            for name, quoted, text, bare in items
        ),
    )
    assert parse_auth_header(format_auth_header(header)) == header
