"""Which leg gives each room track its audio (`MediaService.track_legs`), indexed by leg too.

A call's end releases its leg and forgets the leg's tracks: found by the leg here, not by a
pass over every track of every call up (issue 18: at 300 calls/s with 1 s calls that pass was
about 600 entries at every call's end, growing with the rate times the calls' length).
"""

from __future__ import annotations

from typing import Any

from sipbridge.media.room_audio import AudioLeg


class TrackLegs(dict[str, AudioLeg]):
    """track sid -> leg. Entries come and go by `[sid] = `, `del`, `pop` and `clear` only."""

    def __init__(self) -> None:
        super().__init__()
        self._by_leg: dict[int, dict[str, None]] = {}  # id(leg) -> its sids (legs live here)

    def __setitem__(self, sid: str, leg: AudioLeg) -> None:
        old = super().get(sid)
        if old is not None:
            self._unindex(sid, old)
        super().__setitem__(sid, leg)
        self._by_leg.setdefault(id(leg), {})[sid] = None

    def __delitem__(self, sid: str) -> None:
        leg = self[sid]
        super().__delitem__(sid)
        self._unindex(sid, leg)

    def pop(self, sid: str, *default: Any) -> Any:
        if sid in self:
            self._unindex(sid, self[sid])
        return super().pop(sid, *default)

    def clear(self) -> None:
        super().clear()
        self._by_leg.clear()

    def sids_of(self, leg: AudioLeg) -> list[str]:
        """The tracks `leg` gives audio to, in the order they were added."""
        return list(self._by_leg.get(id(leg), ()))

    def _unindex(self, sid: str, leg: AudioLeg) -> None:
        sids = self._by_leg.get(id(leg))
        if sids is not None:
            sids.pop(sid, None)
            if not sids:
                del self._by_leg[id(leg)]
