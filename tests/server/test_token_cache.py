"""A token verified once is not decoded again (the official clients send the same token for
every request made in one second), yet a cached token still expires, still waits for its `nbf`,
and stops working once its key is removed or given another secret."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
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
