"""Identifiers with the prefixes LiveKit clients expect (`ST_`, `SDR_`, `SCL_`, `RM_`, ...)."""

from __future__ import annotations

import os
from collections.abc import Iterator

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


_DRAWS = 256  # 128-bit draws read from the OS at once


def _draw_some() -> Iterator[int]:
    """`_DRAWS` fresh 128-bit draws: one read from the OS for them all (one a draw cost a
    system call, 1 us of the 1.6-2.2 an id; issue 18: several ids a call)."""
    pool = os.urandom(16 * _DRAWS)
    return iter([int.from_bytes(pool[n : n + 16]) for n in range(0, len(pool), 16)])


_draws = _draw_some()


def _after_fork() -> None:
    """A child process must not give the ids its parent will: draws of its own."""
    global _draws
    _draws = _draw_some()


os.register_at_fork(after_in_child=_after_fork)


def new_id(prefix: str) -> str:
    """A fresh random id such as `ST_Hq3kZ8m2PqRx`: 12 base-57 digits of one 128-bit draw from
    the OS (57**12 of 2**128 values: the bias is below 2**-58). A draw is taken by one `next`
    (atomic under the GIL: no two threads get the same)."""
    global _draws
    value = next(_draws, None)
    if value is None:
        _draws = _draw_some()
        value = next(_draws)
    pairs = _PAIRS
    value, a = divmod(value, _PAIR)
    value, b = divmod(value, _PAIR)
    value, c = divmod(value, _PAIR)
    value, d = divmod(value, _PAIR)
    value, e = divmod(value, _PAIR)
    return f"{prefix}{pairs[a]}{pairs[b]}{pairs[c]}{pairs[d]}{pairs[e]}{pairs[value % _PAIR]}"
