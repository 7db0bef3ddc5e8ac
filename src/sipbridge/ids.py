"""Identifiers with the prefixes LiveKit clients expect (`ST_`, `SDR_`, `SCL_`, `RM_`, ...)."""

from __future__ import annotations

import secrets

TRUNK = "ST_"
DISPATCH_RULE = "SDR_"
CALL = "SCL_"
TRANSFER = "STR_"
ROOM = "RM_"
PARTICIPANT = "PA_"
TRACK = "TR_"
WEBHOOK_EVENT = "EV_"
EGRESS = "EG_"

# Base57 without look-alike characters, as LiveKit's guids use: readable and URL/SIP-token safe.
_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_LENGTH = 12  # 57**12 ~ 2**70: collisions are not a practical concern
_BASE = len(_ALPHABET)
# Two digits at a time, in the order one at a time gives them (the lower first): 6 divisions by
# 57**2 instead of 12 by 57 (issue 18: 3.0-4.4 -> 1.6-1.9 us an id, several ids a call).
_PAIR = _BASE * _BASE
_PAIRS = tuple(_ALPHABET[p % _BASE] + _ALPHABET[p // _BASE] for p in range(_PAIR))


def new_id(prefix: str) -> str:
    """A fresh random id such as `ST_Hq3kZ8m2PqRx`: 12 base-57 digits of one 128-bit draw from
    the OS (one read, where a choice per character was twelve; 57**12 of 2**128 values: the
    bias is below 2**-58)."""
    value = int.from_bytes(secrets.token_bytes(16))
    pairs = _PAIRS
    value, a = divmod(value, _PAIR)
    value, b = divmod(value, _PAIR)
    value, c = divmod(value, _PAIR)
    value, d = divmod(value, _PAIR)
    value, e = divmod(value, _PAIR)
    return f"{prefix}{pairs[a]}{pairs[b]}{pairs[c]}{pairs[d]}{pairs[e]}{pairs[value % _PAIR]}"
