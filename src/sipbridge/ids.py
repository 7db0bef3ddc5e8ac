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


def new_id(prefix: str) -> str:
    """A fresh random id such as `ST_Hq3kZ8m2PqRx`: 12 base-57 digits of one 128-bit draw from
    the OS (one read, where a choice per character was twelve; 57**12 of 2**128 values: the
    bias is below 2**-58)."""
    value = int.from_bytes(secrets.token_bytes(16))
    digits = []
    for _ in range(_LENGTH):
        value, digit = divmod(value, len(_ALPHABET))
        digits.append(_ALPHABET[digit])
    return prefix + "".join(digits)
