"""What one room takes (issue 17 s3): at most `max_callers` SIP participants at once, and calls
joining it at most `join_rate` a second (twice that at once), whichever direction they come from.
A flood into a room that holds a caller is refused before it costs the room anything."""

from __future__ import annotations

from collections import OrderedDict

from sipbridge.rooms import Room
from sipbridge.rooms.model import SIP
from sipbridge.sip.admission import TokenBucket


class RoomLimits:
    def __init__(self, max_callers: int = 0, join_rate: float = 0.0, capacity: int = 10_000):
        self.max_callers = max_callers  # 0: no cap
        self.join_rate = join_rate  # 0: no cap
        self.capacity = capacity  # rooms whose joins are remembered (least recent go first)
        self._joins: OrderedDict[str, TokenBucket] = OrderedDict()

    def refuse(self, name: str, room: Room | None, identity: str, now: float) -> str | None:
        """Why a call with `identity` may not join room `name` (`room`, None while it does not
        exist) now: a counter's name, or None."""
        if self.max_callers and room is not None:
            callers = sum(
                1 for p in room.participants.values() if p.kind == SIP and p.identity != identity
            )
            if callers >= self.max_callers:
                return "room_full_of_callers"
        if self.join_rate and not self._bucket(name, now).take(now):
            return "room_join_rate"
        return None

    def _bucket(self, name: str, now: float) -> TokenBucket:
        bucket = self._joins.get(name)
        if bucket is None:
            bucket = self._joins[name] = TokenBucket.full(self.join_rate, 2 * self.join_rate, now)
            while len(self._joins) > self.capacity:
                self._joins.popitem(last=False)
        else:
            self._joins.move_to_end(name)
        return bucket
