"""DTMF between phones and rooms: a key pressed on a phone becomes a reliable `sip_dtmf` packet
in its room (SIP-BEHAVIOUR.md s5); `SipDTMF` packets (or SendData on a DTMF topic) reaching SIP
participants are played to their phones, as RFC 4733 events or as tones."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from livekit.protocol import models

from sipbridge.errors import ApiError
from sipbridge.media.dtmf import digit_code
from sipbridge.rooms import events as ev
from sipbridge.server.state.rooms_runtime import RoomsRuntime
from sipbridge.telephony.dtmf import dtmf_digits_for_sip

MAX_DIGITS = 64  # played from one packet


def key_to_room(rooms: RoomsRuntime, room: str, identity: str, digit: str) -> None:
    """A key pressed on the phone of `identity`: its `sip_dtmf` packet to everyone in `room`."""
    packet = models.DataPacket(
        kind=models.DataPacket.Kind.RELIABLE,
        participant_identity=identity,
        sip_dtmf=models.SipDTMF(code=digit_code(digit), digit=digit),
    )
    try:
        rooms.registry.send_data(room, packet)
    except ApiError:
        return
    rooms.commit()


def keys_to_phones(
    event: ev.DataSent,
    calls: Mapping[str, object],
    play: Callable[[str, str], bool],
    count: Callable[[str], None],
) -> None:
    """The DTMF `event` carries, played by `play(key, digits)` on each of `calls` (keyed by
    `room_participant_key`) it is for; `play` says whether that call could play it."""
    found = dtmf_digits_for_sip(event)
    if found is None:
        return
    digits, targets = found
    if not digits:
        count("dtmf_unreadable")
        return
    for key in targets(calls):
        if play(key, digits[:MAX_DIGITS]):
            count("dtmf_sent")
