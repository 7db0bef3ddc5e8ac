"""A token verified once is not decoded again (the official clients send the same token for
every request made in one second), yet a cached token still expires, still waits for its `nbf`,
and stops working once its key is removed or given another secret."""

from __future__ import annotations

import random
import time
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from jwt.api_jws import PyJWS
from livekit import api

from sipbridge.errors import ApiError
from sipbridge.server.api import auth
from sipbridge.server.api.auth import LEEWAY_S, verify_token

KEY, SECRET = "cachekey", "a-secret-of-at-least-thirty-two-characters"
KEYS = {KEY: SECRET}


def official_token() -> str:
    grants = api.VideoGrants(room_admin=True, room="r1")
    return api.AccessToken(KEY, SECRET).with_grants(grants).to_jwt()


def pyjwt_token(**claims: Any) -> str:
    return str(jwt.encode({"iss": KEY, **claims}, SECRET, algorithm="HS256"))


def test_the_same_token_twice_gives_the_same_claims_without_decoding_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = official_token()
    first = verify_token(token, KEYS)
    assert first.api_key == KEY and first.video.get("roomAdmin") is True

    def no_decode(*args: object, **kwargs: object) -> object:
        raise AssertionError("decoded again")

    monkeypatch.setattr(auth.jwt, "decode", no_decode)
    monkeypatch.setattr(auth._decoder, "decode", no_decode)
    assert verify_token(token, KEYS) == first


def test_a_cached_token_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    now = int(time.time())
    token = pyjwt_token(nbf=now, exp=now + 5, video={"roomList": True})
    assert verify_token(token, KEYS).video_grant("roomList")
    # later than exp + leeway, for this module only (PyJWT is not asked: the cache answers)
    monkeypatch.setattr(auth, "time", SimpleNamespace(time=lambda: now + 5 + LEEWAY_S))
    with pytest.raises(ApiError, match="expired"):
        verify_token(token, KEYS)
    monkeypatch.setattr(auth, "time", SimpleNamespace(time=lambda: now + 4 + LEEWAY_S))
    assert verify_token(token, KEYS).video_grant("roomList")


def test_a_cached_token_is_not_valid_before_its_nbf_or_iat(monkeypatch: pytest.MonkeyPatch) -> None:
    now = int(time.time())
    token = pyjwt_token(nbf=now, iat=now + 30, exp=now + 600)
    verify_token(token, KEYS)
    # a wall clock set back: the token's iat is now further ahead than the leeway
    monkeypatch.setattr(auth, "time", SimpleNamespace(time=lambda: now + 29 - LEEWAY_S))
    with pytest.raises(ApiError, match="not valid yet"):
        verify_token(token, KEYS)


def test_a_cached_token_of_a_removed_or_changed_key_is_refused() -> None:
    token = official_token()
    verify_token(token, KEYS)
    with pytest.raises(ApiError, match="unknown API key"):
        verify_token(token, {})
    verify_token(token, KEYS)
    with pytest.raises(ApiError, match="signature mismatch"):
        verify_token(token, {KEY: "another-secret-of-at-least-thirty-two-chars"})
    assert verify_token(token, KEYS).api_key == KEY


def test_the_cache_is_bounded() -> None:
    now = int(time.time())
    tokens = [pyjwt_token(exp=now + 600, sub=f"p{i}") for i in range(auth.VERIFIED_MAX + 10)]
    for token in tokens:
        verify_token(token, KEYS)
    assert len(auth._verified) <= auth.VERIFIED_MAX
    assert tokens[-1] in auth._verified and tokens[0] not in auth._verified


@pytest.mark.parametrize(
    ("claims", "error"),
    [
        ({"iss": "otherkey", "exp": 600}, "unknown API key"),
        ({"iss": None, "exp": 600}, "unknown API key"),
        ({"exp": -LEEWAY_S - 5}, "expired"),
        ({"nbf": LEEWAY_S + 30, "exp": 600}, "not valid yet"),
        ({"video": ["roomList"], "exp": 600}, "malformed grants"),
    ],
    ids=["other-issuer", "no-issuer", "expired", "nbf-ahead", "grants-not-object"],
)
def test_with_one_key_a_bad_token_gets_the_same_refusal(claims: dict[str, Any], error: str) -> None:
    """A server with one key verifies with it at once; what fails still gets its own error."""
    now = int(time.time())
    timed = {k: now + v if k in ("exp", "nbf") else v for k, v in claims.items()}
    payload = {k: v for k, v in {"iss": KEY, **timed}.items() if v is not None}
    token = str(jwt.encode(payload, SECRET, algorithm="HS256"))
    with pytest.raises(ApiError, match=error):
        verify_token(token, KEYS)
    with pytest.raises(ApiError, match=error):  # two keys: the general path, the same answer
        verify_token(token, {**KEYS, "spare": "another-secret-of-at-least-thirty-two-chars"})


def test_new_tokens_of_one_secret_prepare_the_key_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every token new (an agent's join to each room): PyJWT verifies each, but the secret is
    prepared (`HMACAlgorithm.prepare_key`: checked not to be a PEM, SSH, DER key or a JWK) once,
    not again for every token; a wrong signature is still refused."""
    hs256 = jwt.get_algorithm_by_name("HS256")
    assert isinstance(hs256, auth.PreparedHmac)
    secret = "a-secret-only-this-test-uses-0123456789"
    keys = {KEY: secret}
    prepared: list[object] = []
    original = jwt.algorithms.HMACAlgorithm.prepare_key

    def counting(self: jwt.algorithms.HMACAlgorithm, key: str | bytes) -> bytes:
        prepared.append(key)
        return original(self, key)

    monkeypatch.setattr(jwt.algorithms.HMACAlgorithm, "prepare_key", counting)
    now = int(time.time())
    for n in range(5):
        token = jwt.encode({"iss": KEY, "exp": now + 600, "sub": f"agent{n}"}, secret, "HS256")
        assert verify_token(token, keys).identity == f"agent{n}"
    assert prepared == [secret]
    forged = jwt.encode(
        {"iss": KEY, "exp": now + 600}, "another-secret-of-thirty-two-chars!", "HS256"
    )
    with pytest.raises(ApiError, match="signature mismatch"):
        verify_token(forged, keys)


def test_a_secret_pyjwt_refuses_is_refused_at_every_use() -> None:
    """A secret that looks like a public key is refused by PyJWT's HS256 (algorithm confusion):
    still at the second use, not let through by the prepared keys."""
    pem = (
        "-----BEGIN PUBLIC KEY-----\n"
        "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n"
        "-----END PUBLIC KEY-----\n"
    )
    hs256 = jwt.get_algorithm_by_name("HS256")
    for _ in range(2):
        with pytest.raises(jwt.InvalidKeyError):
            hs256.prepare_key(pem)


def _segment_outcome(decode: Any, segment: bytes) -> tuple[str, object]:
    try:
        return "decoded", decode(segment, "payload")
    except jwt.DecodeError as exc:
        return "refused", str(exc)


def test_segments_are_checked_as_pyjwt_checks_them() -> None:
    """The C check of a token's segments (`SegmentCheckedJws`) decodes what PyJWT's own check
    decodes, to the same bytes, and refuses what it refuses, with its message: the segments of
    real tokens and, seeded, thousands of mutations (padding, junk, base64 but not base64url,
    non-canonical last characters, every length modulo 4)."""
    rng = random.Random(18)
    tokens = [official_token(), pyjwt_token(exp=600, sub="p\u00e9", video={"roomJoin": True})]
    segments = [part.encode() for token in tokens for part in token.split(".")]
    segments += [b"", b"A", b"AA", b"AAA", b"AAAA", b"AB", b"AB==", b"ABC=", b"A===", b"=", b"=="]
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/!. \n\xc3"
    for _ in range(6000):
        seg = bytearray(rng.choice(segments))
        for _ in range(rng.randint(1, 3)):
            where = rng.randint(0, len(seg))
            action = rng.random()
            if action < 0.4:
                seg[where:where] = bytes([rng.choice(alphabet)])
            elif action < 0.7 and seg:
                del seg[min(where, len(seg) - 1)]
            elif seg:
                seg[min(where, len(seg) - 1)] = rng.choice(alphabet)
        segments.append(bytes(seg))
    outcomes = {"decoded": 0, "refused": 0}
    for each in segments:
        ours = _segment_outcome(auth.SegmentCheckedJws._decode_base64url_segment, each)
        theirs = _segment_outcome(PyJWS._decode_base64url_segment, each)
        assert ours == theirs, each
        outcomes[ours[0]] += 1
    assert min(outcomes.values()) > 1000  # both outcomes well covered


def test_a_usual_token_is_verified_without_pyjwts_per_character_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token of the usual shape (no padding, base64url only) never reaches PyJWT's
    per-character check; a padded one does, and is still verified by it."""
    checked: list[bytes] = []
    original = PyJWS._decode_base64url_segment

    def counting(segment: bytes, name: str) -> bytes:
        checked.append(segment)
        return original(segment, name)

    monkeypatch.setattr(PyJWS, "_decode_base64url_segment", staticmethod(counting))
    now = int(time.time())
    token = pyjwt_token(exp=now + 600, sub="agent-usual")
    assert verify_token(token, KEYS).identity == "agent-usual"
    assert checked == []
    head, payload, signature = token.split(".")
    padded = ".".join([head, payload + "=" * (-len(payload) % 4 or 4), signature])
    with pytest.raises(ApiError):  # by PyJWT: its padding, or its signature no longer matching
        verify_token(padded, KEYS)
    assert checked
