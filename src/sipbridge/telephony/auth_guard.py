"""Password guessing held off: failed digest answers counted per source and per trunk, a source
that fails too often blocked for a while, each block twice as long as the last (issue 17 s4).

A wrong password from an address counts against it; `max_failures` of them within `window`
seconds block the address for `block` seconds, then `2 * block`, `4 * block`... up to `max_block`
(the strikes are forgotten after a quiet `max_block`). While blocked, the server answers 403
without a challenge, whatever the credentials: a guesser learns nothing, and even the right
password is refused until the block ends. A success clears the address's count.

Blocks are per source, never per trunk: a trunk-wide block would let anyone lock a carrier out
by failing on purpose. Failures per trunk are counted for the operator (`/metrics`) instead.
Memory is bounded: at most `capacity` sources are remembered, the least recently seen go first.
A source is `sip.admission.source_key`'s: an IPv6 address counts with its /64 (a guesser would
otherwise take a fresh address for every ten guesses). Pure: time is an argument.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass

from sipbridge.sip.admission import source_key

DEFAULT_MAX_FAILURES = 10
DEFAULT_WINDOW_S = 300.0
DEFAULT_BLOCK_S = 60.0
DEFAULT_MAX_BLOCK_S = 3600.0
DEFAULT_CAPACITY = 10_000


@dataclass(slots=True)
class _Source:
    failures: int = 0
    first_failure: float = 0.0
    strikes: int = 0  # blocks so far: the next lasts block * 2**strikes
    blocked_until: float = 0.0
    last_seen: float = 0.0


class AuthGuard:
    def __init__(
        self,
        *,
        max_failures: int = DEFAULT_MAX_FAILURES,
        window: float = DEFAULT_WINDOW_S,
        block: float = DEFAULT_BLOCK_S,
        max_block: float = DEFAULT_MAX_BLOCK_S,
        capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        if max_failures < 1 or window <= 0 or block <= 0 or max_block < block or capacity < 1:
            raise ValueError("auth guard limits must be positive (max_block >= block)")
        self.max_failures = max_failures
        self.window = window
        self.block = block
        self.max_block = max_block
        self.capacity = capacity
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self.trunk_failures: Counter[str] = Counter()
        self.blocks = 0  # blocks imposed
        self.refused = 0  # attempts refused while blocked

    def __len__(self) -> int:
        return len(self._sources)

    def blocked(self, source: str, now: float) -> float | None:
        """Until when `source` is blocked (a refusal is counted), or None."""
        entry = self._sources.get(source_key(source))
        if entry is None or entry.blocked_until <= now:
            return None
        self.refused += 1
        return entry.blocked_until

    def blocked_count(self, now: float) -> int:
        """Sources blocked now (for `/metrics`; counts no refusal)."""
        return sum(1 for entry in self._sources.values() if entry.blocked_until > now)

    def failed(self, source: str, trunk: str, now: float) -> float | None:
        """A wrong answer from `source` for `trunk`; until when it is now blocked, or None."""
        self.trunk_failures[trunk] += 1
        entry = self._entry(source, now)
        if entry.strikes and now - max(entry.last_seen, entry.blocked_until) > self.max_block:
            entry.strikes = 0  # quiet long enough: the back-off starts again
        if not entry.failures or now - entry.first_failure > self.window:
            entry.failures, entry.first_failure = 0, now
        entry.failures += 1
        entry.last_seen = now
        if entry.failures < self.max_failures:
            return None
        length = min(self.block * 2**entry.strikes, self.max_block)
        entry.strikes += 1
        entry.failures = 0
        entry.blocked_until = now + length
        self.blocks += 1
        return entry.blocked_until

    def succeeded(self, source: str) -> None:
        """The right answer: the source's failures are forgiven."""
        self._sources.pop(source_key(source), None)

    def _entry(self, source: str, now: float) -> _Source:
        key = source_key(source)
        entry = self._sources.get(key)
        if entry is None:
            entry = self._sources[key] = _Source(last_seen=now)
            while len(self._sources) > self.capacity:
                self._sources.popitem(last=False)  # the least recently seen
        else:
            self._sources.move_to_end(key)
        return entry
