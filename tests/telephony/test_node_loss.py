"""A call lost with its node (`telephony/node_loss.py`): which records count as ended, and the
record another node writes for a call that had not."""

from __future__ import annotations

from livekit.protocol import models
from livekit.protocol import sip as proto

from sipbridge.telephony.node_loss import ended_by_node_loss, has_ended


def call(status: int, ended_at_ns: int = 0) -> proto.SIPCallInfo:
    return proto.SIPCallInfo(
        call_id="SCL_a", call_status=status, started_at_ns=10, ended_at_ns=ended_at_ns
    )


def test_ended_records_are_left_and_live_ones_end_by_node_loss() -> None:
    s = proto.SIPCallStatus
    assert not has_ended(call(s.SCS_ACTIVE)) and not has_ended(call(s.SCS_CALL_INCOMING))
    assert has_ended(call(s.SCS_DISCONNECTED)) and has_ended(call(s.SCS_ERROR))
    assert has_ended(call(s.SCS_ACTIVE, ended_at_ns=5))
    for done in (call(s.SCS_DISCONNECTED), call(s.SCS_ERROR, 20)):
        assert ended_by_node_loss(done.SerializeToString(), "n1", 3_000_000_000) is None
    for status in (s.SCS_CALL_INCOMING, s.SCS_PARTICIPANT_JOINED, s.SCS_ACTIVE):
        data = ended_by_node_loss(call(status).SerializeToString(), "n1", 3_500_000_000)
        assert data is not None
        info = proto.SIPCallInfo.FromString(data)
        assert info.call_status == s.SCS_ERROR
        assert info.error == "node lost: n1 stopped (its heartbeat expired)"
        assert info.disconnect_reason == models.DisconnectReason.SERVER_SHUTDOWN
        assert (info.ended_at, info.ended_at_ns) == (3, 3_500_000_000)
        assert info.call_id == "SCL_a" and info.started_at_ns == 10


def test_a_record_that_is_not_a_call_is_left_alone() -> None:
    assert ended_by_node_loss(b"\xff\xff\xff", "n1", 1) is None
