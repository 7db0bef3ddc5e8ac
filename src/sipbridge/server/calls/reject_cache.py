"""The answers given to refused INVITEs, kept a minute: a retry of one (same Call-ID and From
tag) gets the same answer at once, without matching it again (SIP-BEHAVIOUR.md s1 step 2)."""

from __future__ import annotations

import time
from collections import OrderedDict

REJECT_CACHE_SIZE = 5000
REJECT_CACHE_TTL_S = 60.0

Key = tuple[str, str]  # Call-ID, From tag


class RejectCache:
    def __init__(self, size: int = REJECT_CACHE_SIZE, ttl: float = REJECT_CACHE_TTL_S) -> None:
        self.size = size
        self.ttl = ttl
        self._answers: OrderedDict[Key, tuple[float, int, str]] = OrderedDict()

    def get(self, key: Key) -> tuple[int, str] | None:
        """The status and reason given to `key` within the last `ttl` seconds."""
        cached = self._answers.get(key)
        if cached is None or cached[0] <= time.monotonic():
            return None
        return cached[1], cached[2]

    def put(self, key: Key, status: int, reason: str) -> None:
        self._answers[key] = (time.monotonic() + self.ttl, status, reason)
        self._answers.move_to_end(key)
        while len(self._answers) > self.size:
            self._answers.popitem(last=False)
