"""DTMF between the room and the phones: which data packets ask SIP participants to play digits,
and which digits (SIP-BEHAVIOUR.md s5). Pure functions over the room's events."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from google.protobuf.message import DecodeError
from livekit.protocol import models

from sipbridge.media.dtmf import DIGITS
from sipbridge.rooms import events as ev
from sipbridge.telephony.call import room_participant_key

# SendData user packets on these topics carry digits to SIP participants: the payload is the
# digits ("123#", `w` for a half-second pause), JSON {"digit": "5"} / {"code": 5}, or a
# serialised livekit.SipDTMF.
DTMF_TOPICS = frozenset({"sip_dtmf", "lk.sip_dtmf", "lk.dtmf", "dtmf"})
DTMF_CHARACTERS = frozenset(DIGITS + DIGITS.lower() + "wW")


def dtmf_digits_for_sip(
    event: ev.DataSent,
) -> tuple[str, Callable[[Mapping[str, object]], list[str]]] | None:
    """The digits a data packet asks SIP participants to play ("" when unreadable), and which
    of a runner's calls (keyed by `room_participant_key`) it is for: its destinations, else
    every SIP participant of the room but its sender. None: not a DTMF packet."""
    packet = event.packet
    which = packet.WhichOneof("value")
    if which == "sip_dtmf":
        digits = packet.sip_dtmf.digit or DIGITS[packet.sip_dtmf.code % 16]
    elif which == "user" and packet.user.topic in DTMF_TOPICS:
        digits = dtmf_payload(packet.user.payload)
    else:
        return None
    sender = packet.participant_identity
    prefix = room_participant_key(event.room_name, "")

    def targets(calls: Mapping[str, object]) -> list[str]:
        if event.destinations:
            return [room_participant_key(event.room_name, i) for i in event.destinations]
        return [
            key
            for key in calls
            if key.startswith(prefix) and key != room_participant_key(event.room_name, sender)
        ]

    return digits, targets


def dtmf_payload(payload: bytes) -> str:
    """Digits from a SendData DTMF payload (see DTMF_TOPICS); "" when none can be read."""
    text = payload.decode("utf-8", "replace").strip()
    if text and all(c in DTMF_CHARACTERS for c in text):
        return text
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            digit = doc.get("digit")
            if isinstance(digit, str) and digit and all(c in DTMF_CHARACTERS for c in digit):
                return digit
            code = doc.get("code")
            if isinstance(code, int) and 0 <= code < 16:
                return DIGITS[code]
        return ""
    message = models.SipDTMF()
    try:
        message.ParseFromString(payload)
    except DecodeError:
        return ""
    if message.digit and all(c in DTMF_CHARACTERS for c in message.digit):
        return message.digit
    if message.digit or not 0 <= message.code < 16:
        return ""
    return DIGITS[message.code] if payload else ""
