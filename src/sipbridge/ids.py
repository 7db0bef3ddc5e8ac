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
    """A fresh random id such as `ST_Hq3kZ8m2PqRx`."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(_LENGTH))
