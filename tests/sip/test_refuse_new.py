"""A user agent that refuses new dialogs (its node drains, docs/cluster.md s6): out-of-dialog
OPTIONS and INVITEs get 503 with Retry-After (RFC 3261 s21.5.4, s20.33), so that a load
balancer's OPTIONS probe marks the node down; a call already up carries on to its BYE."""

from __future__ import annotations

from sipbridge.sip.endpoint import ResponseForUs
from sipbridge.sip.ua.invite import CallEnded, InviteReceived
from tests.sip.test_call_flows import call_answered, caller_callee, uac_and_uas
from tests.sip.test_transactions import request

OPTIONS = (
    b"OPTIONS sip:bob@127.0.0.1:5070 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKo1\r\n"
    b"From: <sip:alice@127.0.0.1>;tag=a\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: o1\r\n"
    b"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)


def test_options_and_new_invites_503_while_a_call_goes_on_to_its_bye() -> None:
    net = uac_and_uas()
    call_answered(net)
    alice, bob = caller_callee(net)
    assert alice.session is not None and bob.session is not None
    net.alice.send_request(request(OPTIONS), net.to_bob, net.now)
    net.deliver()
    assert alice.statuses("OPTIONS") == [200]

    bob.ua.refuse_new = 30
    probe = request(OPTIONS.replace(b"bKo1", b"bKo2").replace(b"Call-ID: o1", b"Call-ID: o2"))
    net.alice.send_request(probe, net.to_bob, net.now)
    second = request(alice.invite.serialize())
    second.headers.set("Call-ID", "second-call")
    second.headers.set("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsecond")
    first, bob.invite = bob.invite, None  # (the helper's Bob expects one INVITE only)
    net.alice.send_request(second, net.to_bob, net.now)
    net.deliver()
    assert bob.invite is not None and bob.invite.request.call_id == "second-call"
    bob.invite = first
    assert [e for _, e in bob.happened if isinstance(e, InviteReceived)] == [
        e for _, e in bob.happened[:1] if isinstance(e, InviteReceived)
    ]  # no session was made of it
    assert alice.statuses("OPTIONS") == [200, 503]
    refusals = [
        e.response
        for _, e in alice.seen
        if isinstance(e, ResponseForUs) and e.response.status == 503
    ]
    assert [r.headers.get("Retry-After") for r in refusals] == ["30", "30"]
    assert all(r.to.tag for r in refusals)  # s8.2.6.2
    assert 503 in alice.statuses("INVITE")
    assert net.bob.stats["options_refused_unavailable"] == 1
    assert net.bob.stats["invite_refused_unavailable"] == 1

    # The call that was up goes on: its BYE is answered as ever.
    alice.session.hangup(net.now)
    net.deliver()
    assert alice.statuses("BYE") == [200]
    assert any(isinstance(e, CallEnded) for _, e in bob.happened)
