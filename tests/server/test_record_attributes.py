"""server/calls/live_call.py `record_attributes`: a participant's attributes into its call
record as a map `update`, setting only what changed since the last time."""

from __future__ import annotations

from livekit.protocol import sip as proto

from sipbridge.server.calls.live_call import record_attributes


def test_first_time_copies_every_attribute() -> None:
    info = proto.SIPCallInfo()
    attributes = {"sip.callStatus": "ringing", "sip.trunkID": "ST_1"}
    recorded = record_attributes(info, attributes, None)
    assert dict(info.participant_attributes) == attributes
    assert recorded == (info, attributes) and recorded[1] is not attributes


def test_changes_and_additions_follow_and_nothing_is_removed() -> None:
    info = proto.SIPCallInfo()
    recorded = record_attributes(info, {"sip.callStatus": "ringing", "a": "1"}, None)
    recorded = record_attributes(info, {"sip.callStatus": "active", "b": "2"}, recorded)
    assert dict(info.participant_attributes) == {"sip.callStatus": "active", "a": "1", "b": "2"}
    record_attributes(info, {"sip.callStatus": "hangup", "b": "2"}, recorded)
    assert info.participant_attributes["sip.callStatus"] == "hangup"


def test_a_new_record_gets_everything() -> None:
    old, new = proto.SIPCallInfo(), proto.SIPCallInfo()
    recorded = record_attributes(old, {"sip.callStatus": "ringing", "a": "1"}, None)
    record_attributes(new, {"sip.callStatus": "ringing", "a": "1"}, recorded)
    assert dict(new.participant_attributes) == {"sip.callStatus": "ringing", "a": "1"}
