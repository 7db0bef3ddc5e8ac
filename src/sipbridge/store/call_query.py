"""A page of the call log: which calls (filters, a time window), how many, from where.

Both stores answer the same query the same way (`SQLiteStore.call_page`, `RedisStore.call_page`):
newest first by creation time, ties by call id descending; `room`, `trunk` and `status` must
equal, `number` matches the caller or the called user; `since_ms <= created < until_ms`; a page
token (`redis_calls.Cursor`) carries on after the last call of the previous page.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

from sipbridge.store.redis_calls import STATUSES, Cursor

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000  # one page: beyond this a client should page, not ask for the whole log
MAX_FILTER_CHARS = 256
# `15m`, `2h`, `7d`, `1w`: that long before now.
_RELATIVE = re.compile(r"^(\d{1,9})([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True, slots=True, kw_only=True)
class CallQuery:
    """What a page of the call log holds. `check()` says what is wrong with it, if anything."""

    limit: int = DEFAULT_LIMIT
    page_token: str = ""
    room: str = ""
    trunk: str = ""
    status: str = ""
    number: str = ""
    since_ms: int = 0  # created at or after (ms since the epoch); 0: no bound
    until_ms: int = 0  # created before; 0: no bound

    def filters(self) -> dict[str, str]:
        """The equality filters given, by name (`FILTERS`)."""
        values = {"room": self.room, "trunk": self.trunk, "status": self.status}
        values["number"] = self.number
        return {name: value for name, value in values.items() if value}

    def check(self) -> None:
        """Raise ValueError naming the first thing wrong: a limit out of 1..MAX_LIMIT, an
        unknown status, an empty or inverted window, a malformed page token."""
        if not 1 <= self.limit <= MAX_LIMIT:
            raise ValueError(f"limit {self.limit}: expected 1 to {MAX_LIMIT}")
        if self.status and self.status not in STATUSES:
            raise ValueError(f"status {self.status!r}: expected one of {', '.join(STATUSES)}")
        for name, value in self.filters().items():
            if len(value) > MAX_FILTER_CHARS:
                raise ValueError(f"{name}: longer than {MAX_FILTER_CHARS} characters")
        if self.since_ms < 0 or self.until_ms < 0:
            raise ValueError("since/until: before 1970")
        if self.since_ms and self.until_ms and self.since_ms >= self.until_ms:
            raise ValueError("since must be before until")
        if self.page_token:
            Cursor.parse(self.page_token)


def parse_time(text: str, now: float, name: str = "time") -> int:
    """A point in time as ms since the epoch, from what a person types: `15m`, `2h`, `7d`, `1w`
    (that long before `now`, seconds since the epoch), an ISO 8601 date or date-time (UTC
    unless it says otherwise), or seconds since the epoch. "" is 0 (no bound)."""
    text = text.strip()
    if not text:
        return 0
    relative = _RELATIVE.match(text)
    if relative:
        ago = int(relative.group(1)) * _UNIT_S[relative.group(2)]
        return max(0, int((now - ago) * 1000))
    if re.fullmatch(r"\d{1,12}(\.\d+)?", text):
        return int(float(text) * 1000)
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{name} {text!r}: expected 15m/2h/7d, an ISO 8601 date or time, or epoch seconds"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    ms = int(when.timestamp() * 1000)
    if ms < 0:
        raise ValueError(f"{name} {text!r}: before 1970")
    return ms
