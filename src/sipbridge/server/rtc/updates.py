"""Participant updates to a room's sessions, gathered over one commit of the room model.

A call joins its room and publishes its phone's track in one commit (`ParticipantJoined`, then
`TrackPublished`), and unpublishes it as it leaves (`TrackUnpublished`, then `ParticipantLeft`):
each event was one `ParticipantUpdate` to every session of the room, the same participant twice,
one version apart. A client applies the latest version of each participant an update carries
(its tracks with it), as from LiveKit's server, which sends several participants in one update.
So the participant events of one commit go out as one update per room when the commit is over:
the latest info of each participant (by sid: a duplicate identity's old participant and its
replacement are two) in the order they first changed (issue 18: two messages fewer a call).

Order is kept: whatever else the signal server sends about the room's events (a leave, data,
the room's metadata, the sections a new or gone track needs, asked for after the updates that
announce it) goes after the updates before it, since those are sent first (`flush`).
"""

from __future__ import annotations

from collections.abc import Callable

from livekit.protocol import models, rtc

from sipbridge.server.rtc.session import Encoded, SessionTable, in_room


class ParticipantUpdates:
    """What the events of the commit under way said about participants, per room."""

    def __init__(
        self, sessions: SessionTable, ask_for_sections: Callable[[str, str], None] | None
    ) -> None:
        self.sessions = sessions
        self.ask_for_sections = ask_for_sections  # (room, publisher to leave out)
        # room -> participant sid -> (its latest info, the identity not told: a leaver itself)
        self._rooms: dict[str, dict[str, tuple[models.ParticipantInfo, str]]] = {}
        self._sections: dict[tuple[str, str], None] = {}  # (room, exclude), in order asked
        self.messages = 0  # updates sent (one per room and commit, or per session left out)

    def add(self, room: str, participant: models.ParticipantInfo, exclude: str = "") -> None:
        """`participant` changed in `room`: every session there but `exclude` is told (hidden
        participants never are)."""
        if participant.permission.hidden:
            return
        self._rooms.setdefault(room, {})[participant.sid] = (participant, exclude)

    def sections(self, room: str, exclude: str = "") -> None:
        """The room's tracks changed: its sessions' media is brought up to date after the
        updates that say so."""
        if self.ask_for_sections is not None:
            self._sections[(room, exclude)] = None

    def flush(self) -> None:
        """Send what was gathered: one update per room, then the sections asked for."""
        while self._rooms or self._sections:
            rooms, self._rooms = self._rooms, {}
            for room, changed in rooms.items():
                self._send(room, list(changed.values()))
            sections, self._sections = self._sections, {}
            if self.ask_for_sections is not None:
                for room, exclude in sections:
                    self.ask_for_sections(room, exclude)

    def _send(self, room: str, changed: list[tuple[models.ParticipantInfo, str]]) -> None:
        everyone: Encoded | None = None
        for session in in_room(self.sessions, room):
            told = [p for p, exclude in changed if exclude != session.identity]
            if not told:
                continue
            if len(told) == len(changed):
                if everyone is None:
                    everyone = _update(told)
                    self.messages += 1
                session.send(everyone)
            else:
                self.messages += 1
                session.send(_update(told))


def _update(participants: list[models.ParticipantInfo]) -> Encoded:
    # Appended, not passed to the constructors: `participants=[...]` copies each participant
    # into the update and `update=` copies that again; `append` copies it once.
    response = rtc.SignalResponse()
    for participant in participants:
        response.update.participants.append(participant)
    return Encoded.of(response)
