"""Random tags, branches and Call-IDs from one CSPRNG stream, not a system call each.

`secrets.token_hex` asks the kernel (getrandom) for every token: a call takes several (a To
tag, a branch per request we send...). Here 4 KiB come from `os.urandom` at a time and tokens
are sliced off them: the same source, the same unpredictability, one system call per some
hundreds of tokens. Bytes are never handed out twice.
"""

from __future__ import annotations

import os

_BLOCK = 4096


class _Pool:
    __slots__ = ("_at", "_data")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._data = b""
        self._at = 0

    def take(self, n: int) -> bytes:
        at = self._at
        end = at + n
        if end > len(self._data):
            self._data = os.urandom(max(_BLOCK, n))
            at, end = 0, n
        self._at = end
        return self._data[at:end]


_pool = _Pool()
# After a fork the child must not hand out its parent's bytes again.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_pool.reset)


def token_hex(nbytes: int) -> str:
    """`nbytes` random bytes as 2 * `nbytes` hex digits (as `secrets.token_hex`)."""
    return _pool.take(nbytes).hex()
