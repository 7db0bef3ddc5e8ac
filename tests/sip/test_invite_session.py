"""The INVITE session and the UA core (`sip/ua/invite.py`, `sip/ua/agent.py`) beyond the RFC
3665 flows of test_call_flows.py: the same in-memory network and fake clock, the real user agent
at both ends. Each bad-input case of issue 11 is a transition here: re-INVITE glare (491, RFC
3261 s14.1), a re-INVITE while our 2xx awaits its ACK (500 + Retry-After, s14.2), an UPDATE in
an early dialog (RFC 3311 s5.2), a REFER or NOTIFY in a dialog that is ending; then the UAC's
retries (Digest s22.2, 422 RFC 4028 s7.4), CANCEL before and after a provisional (s9.1), the
refreshes and transfers of ours, and Hypothesis over the state table and over call sequences.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.sip.digest import DigestClient, DigestServer
from sipbridge.sip.endpoint import AckReceived as EndpointAck
from sipbridge.sip.endpoint import RequestReceived
from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.message import Request, Response, make_response
from sipbridge.sip.ua.agent import RequestAnswered
from sipbridge.sip.ua.agent import UserAgent as AgentCore
from sipbridge.sip.ua.invite import (
    TRANSITIONS,
    AckReceived,
    CallEnded,
    CallFailed,
    Input,
    InviteReceived,
    InviteSession,
    NotifyReceived,
    OfferReceived,
    ReferAnswered,
    RefreshAnswered,
    Role,
    State,
    allowed_methods,
)
from sipbridge.sip.ua.session_timer import SessionIntervalTooSmall
from tests.sip.test_call_flows import (
    ALICE_TAG,
    BOB_SDP,
    Callee,
    Caller,
    Network,
    UserAgent,
    call_answered,
    caller_callee,
    lose,
    uac_and_uas,
)
from tests.sip.test_transactions import BOB_TAG, TIMEOUT, describe, request

ALICE_SDP = BOB_SDP.replace(b"bob", b"alice")


def of(agent: UserAgent, kind: type) -> list[object]:
    return [event for _, event in agent.happened if isinstance(event, kind)]


def answered() -> tuple[Network, Caller, Callee]:
    net = uac_and_uas()
    call_answered(net)
    alice, bob = caller_callee(net)
    assert alice.session is not None and bob.session is not None
    assert alice.session.state is State.CONFIRMED and bob.session.state is State.CONFIRMED
    return net, alice, bob


def session(agent: UserAgent) -> InviteSession:
    assert agent.session is not None
    return agent.session


def accept_every_offer(agent: UserAgent, body: bytes = b"") -> None:
    """The application's answer to each OfferReceived as it comes."""
    drain = agent.drain

    def accepting() -> None:
        before = len(agent.happened)
        drain()
        for _, event in agent.happened[before:]:
            if isinstance(event, OfferReceived):
                event.session.accept_offer(event.request, agent.net.now, body)

    agent.drain = accepting  # type: ignore[method-assign]


# -- glare, early re-INVITEs and early dialogs ---------------------------------------------------


def test_s14_1_reinvite_glare_is_491_both_ways() -> None:
    net, alice, bob = answered()
    session(alice).remote_allow = frozenset({"INVITE", "ACK", "BYE"})  # no UPDATE: re-INVITE
    assert session(alice).refresh(net.now, body=ALICE_SDP)
    assert session(bob).refresh(net.now, body=BOB_SDP)
    net.deliver()
    assert alice.statuses("INVITE")[-1] == 491 and bob.statuses("INVITE")[-1] == 491
    assert [e.response.status for e in of(alice, RefreshAnswered)] == [491]  # type: ignore[attr-defined]
    assert [e.response.status for e in of(bob, RefreshAnswered)] == [491]  # type: ignore[attr-defined]
    assert of(alice, OfferReceived) == [] and of(bob, OfferReceived) == []
    # Neither offer is pending any more: the next re-INVITE goes through (s14.1: retry later).
    accept_every_offer(bob, BOB_SDP)
    assert session(alice).refresh(net.now + 3, body=ALICE_SDP)
    net.deliver()
    assert alice.statuses("INVITE")[-1] == 200
    assert session(alice).state is State.CONFIRMED


def test_s14_2_reinvite_while_our_2xx_awaits_its_ack_is_500_retry_after() -> None:
    net = uac_and_uas()
    call_answered(net, drop=lose("ACK"))
    alice, bob = caller_callee(net)
    assert session(bob).state is State.ANSWERED  # the ACK was lost
    session(alice).remote_allow = frozenset({"INVITE"})
    session(alice).refresh(net.now, body=ALICE_SDP)
    net.deliver()
    [refusal] = [w.message for w in net.wire if describe(w.message) == "500 INVITE"]
    assert isinstance(refusal, Response) and refusal.headers.get("Retry-After") == "1"
    assert of(bob, OfferReceived) == []
    # The 2xx comes again, is ACKed; then the same re-INVITE would be taken.
    net.run(3.0)
    assert session(bob).state is State.CONFIRMED
    assert [e.first for e in of(bob, AckReceived)] == [True]  # type: ignore[attr-defined]


def test_s14_2_second_reinvite_while_the_first_ones_2xx_awaits_its_ack() -> None:
    net, alice, bob = answered()
    accept_every_offer(bob, BOB_SDP)
    session(alice).remote_allow = frozenset({"INVITE"})
    session(alice).refresh(net.now, body=ALICE_SDP)
    net.deliver(drop=lose("ACK"))  # Alice's ACK of the re-INVITE's 2xx is lost
    assert session(bob).retransmitter is not None
    assert session(bob).retransmitter.get_timer() is not None
    session(alice).refresh(net.now, body=ALICE_SDP)
    net.deliver()
    assert alice.statuses("INVITE")[-2:] == [200, 500]
    net.run(net.now + 1)  # Bob's 2xx again, the same ACK again (s13.2.2.4)
    acks = [w.message for w in net.wire if describe(w.message) == "ACK" and w.message.cseq.seq == 2]
    assert len(acks) == 2 and acks[0].serialize() == acks[1].serialize()
    assert [e.first for e in of(bob, AckReceived)] == [True, False]  # type: ignore[attr-defined]
    assert [e.response.status for e in of(alice, RefreshAnswered)] == [200, 500]  # type: ignore[attr-defined]


def test_offer_while_the_previous_offer_is_unanswered_is_500() -> None:
    net, alice, bob = answered()
    session(alice).remote_allow = frozenset({"INVITE", "UPDATE"})
    session(alice).refresh(net.now, body=b"")  # UPDATE, no offer
    net.deliver()
    [offer] = of(bob, OfferReceived)
    assert isinstance(offer, OfferReceived)  # Bob's application has not answered yet
    session(bob).refresh(net.now, body=BOB_SDP)  # Bob's own re-INVITE (Alice allowed nothing)
    raw = session(alice).build_request("UPDATE")
    raw.body = ALICE_SDP
    net.alice.send_request(raw, net.to_bob, net.now)
    net.deliver()
    # Alice took Bob's re-INVITE as an offer; Bob refused Alice's UPDATE offer: his own is out.
    assert alice.statuses("UPDATE")[-1] == 491
    session(bob).accept_offer(offer.request, net.now, b"")
    session(bob).accept_offer(offer.request, net.now, b"")  # twice: the second changes nothing
    net.deliver()
    assert alice.statuses("UPDATE")[-2:] == [491, 200]
    # An offer while one of the peer's awaits our answer: 500 + Retry-After (RFC 3311 s5.2).
    [bobs] = of(alice, OfferReceived)
    assert isinstance(bobs, OfferReceived) and bobs.request.method == "INVITE"
    update = session(bob).build_request("UPDATE")
    update.body = BOB_SDP
    net.bob.send_request(update, net.to_alice, net.now)
    net.deliver()
    assert bob.statuses("UPDATE") == [500]
    session(alice).refuse_offer(bobs.request, SessionIntervalTooSmall(120), net.now)
    session(alice).refuse_offer(bobs.request, SipProtocolError(488, "Not Acceptable Here"), net.now)
    net.deliver()
    [too_small] = [w.message for w in net.wire if describe(w.message) == "422 INVITE"]
    assert isinstance(too_small, Response) and too_small.headers.get("Min-SE") == "120"


def early() -> tuple[Network, Caller, Callee]:
    net = uac_and_uas()
    alice, bob = caller_callee(net)
    alice.call()
    net.deliver()
    bob.ring()
    net.deliver()
    assert session(bob).state is State.PROCEEDING and alice.early is not None
    return net, alice, bob


def in_early_dialog(net: Network, alice: Caller, method: str, body: bytes = b"") -> None:
    assert alice.early is not None
    req = alice.early.create_request(method, alice.ua.via(net.to_bob))
    req.body = body
    net.alice.send_request(req, net.to_bob, net.now)
    net.deliver()


def test_rfc3311_update_in_an_early_dialog() -> None:
    net, alice, bob = early()
    in_early_dialog(net, alice, "UPDATE", ALICE_SDP)  # an offer: the INVITE's is unanswered
    in_early_dialog(net, alice, "UPDATE")  # no offer: nothing to refuse
    in_early_dialog(net, alice, "INFO")
    in_early_dialog(net, alice, "INVITE")  # s14.2: the first INVITE has no final response yet
    assert alice.statuses("UPDATE") == [500, 200]
    assert alice.statuses("INFO") == [200]
    assert alice.statuses("INVITE")[-1] == 500
    refusals = [w.message for w in net.wire if describe(w.message) in ("500 UPDATE", "500 INVITE")]
    assert all(isinstance(r, Response) and r.headers.get("Retry-After") for r in refusals)
    assert session(bob).state is State.PROCEEDING and bob.outcomes() == ["InviteReceived"]


def test_s15_1_2_callers_bye_in_the_early_dialog_ends_the_invite_with_487() -> None:
    net, alice, bob = early()
    in_early_dialog(net, alice, "BYE")
    assert alice.statuses("BYE") == [200]
    assert alice.statuses("INVITE")[-1] == 487
    assert bob.outcomes() == ["InviteReceived", "CallEnded"]
    assert [e.reason for e in of(bob, CallEnded)] == ["bye"]  # type: ignore[attr-defined]
    assert [(e.status, e.response is not None) for e in of(alice, CallFailed)] == [(487, True)]  # type: ignore[attr-defined]
    assert session(bob).state is State.TERMINATED and net.bob.stats["refused_481"] == 0


# -- a dialog that is ending ---------------------------------------------------------------------


def test_refer_notify_and_requests_in_a_dialog_that_is_ending() -> None:
    net, alice, bob = answered()
    assert session(alice).hangup(net.now)
    assert session(alice).state is State.ENDING and session(alice).ended
    # Ours: no REFER, refresh or second BYE once the BYE is out.
    assert not session(alice).refer(net.now, "<sip:carol@127.0.0.1>")
    assert not session(alice).refresh(net.now)
    assert not session(alice).hangup(net.now)
    # Theirs, crossing our BYE: a NOTIFY (transfer progress) is 481, their BYE 200.
    bob.send_raw("NOTIFY")
    bob.send_raw("BYE")
    net.deliver(drop=lambda m: describe(m) == "BYE" and m.from_.tag == ALICE_TAG)
    assert bob.statuses("NOTIFY") == [481] and bob.statuses("BYE") == [200]
    assert of(alice, NotifyReceived) == []
    assert alice.outcomes() == ["ProvisionalReceived", "CallAnswered", "CallEnded"]
    # Our BYE gets no answer (lost every time): the session ends at Timer F all the same.
    net.run(net.now + TIMEOUT + 1, drop=lambda m: describe(m) == "BYE")
    assert session(alice).state is State.TERMINATED and alice.ua.dialogs == {}
    assert session(alice).get_timer() is None


def test_refer_answered_then_its_notifys_and_a_refer_left_unanswered() -> None:
    net, alice, bob = answered()
    net.bob.settings.allow = (*net.bob.settings.allow, "REFER", "MESSAGE")
    assert session(alice).refer(net.now, "<sip:carol@127.0.0.1>", {"X-Why": "test"})
    net.deliver()
    [refer] = [w.message for w in net.wire if describe(w.message) == "REFER"]
    assert isinstance(refer, Request) and refer.headers.get("Refer-To") == "<sip:carol@127.0.0.1>"
    assert refer.headers.get("Referred-By") == "sip:alice@127.0.0.1:5060"
    assert refer.headers.get("Contact") is not None and refer.headers.get("X-Why") == "test"
    [answer] = [w.message for w in net.wire if describe(w.message) == "405 REFER"]
    assert isinstance(answer, Response) and "UPDATE" in allowed_methods(answer)
    assert [(e.status, e.reason) for e in of(alice, ReferAnswered)] == [(405, "Method Not Allowed")]  # type: ignore[attr-defined]
    bob.send_raw("NOTIFY")
    bob.send_raw("INFO")
    bob.send_raw("OPTIONS")
    alice.send_raw("MESSAGE")
    net.deliver()
    assert [e.request.method for e in of(alice, NotifyReceived)] == ["NOTIFY"]  # type: ignore[attr-defined]
    assert (bob.statuses("INFO"), bob.statuses("OPTIONS")) == ([200], [200])
    assert alice.statuses("MESSAGE") == [501]
    session(alice).refer(net.now, "<sip:dave@127.0.0.1>")
    net.run(net.now + TIMEOUT + 1, drop=lambda m: describe(m) == "REFER")
    assert [e.status for e in of(alice, ReferAnswered)] == [405, 408]  # type: ignore[attr-defined]
    assert session(alice).state is State.CONFIRMED  # the transfer failed, not the call


# -- refreshes of ours ----------------------------------------------------------------------------


def test_update_refresh_and_its_answers() -> None:
    net, alice, bob = answered()
    accept_every_offer(bob)
    assert session(alice).refresh(net.now, {"Session-Expires": "90;refresher=uac"})
    net.deliver()
    [update] = [w.message for w in net.wire if describe(w.message) == "UPDATE"]
    assert isinstance(update, Request) and update.body == b"" and update.headers.get("Contact")
    [refreshed] = of(alice, RefreshAnswered)
    assert isinstance(refreshed, RefreshAnswered) and not refreshed.dialog_gone
    # No answer at all: RefreshAnswered(None), the dialog is gone (s12.2.1.2).
    session(alice).refresh(net.now)
    net.run(net.now + TIMEOUT + 1, drop=lambda m: describe(m) == "UPDATE")
    last = of(alice, RefreshAnswered)[-1]
    assert isinstance(last, RefreshAnswered) and last.response is None and last.dialog_gone


def test_reinvite_refresh_answered_481() -> None:
    net, alice, bob = answered()
    session(bob).refresh(net.now, body=BOB_SDP)  # Alice's INVITE allowed no UPDATE
    net.deliver()
    [offer] = of(alice, OfferReceived)
    assert isinstance(offer, OfferReceived) and offer.request.body == BOB_SDP
    # Alice's application takes the offer and answers 481 itself: not a refresh it knows.
    session(alice)._offers.pop(id(offer.request))
    [received] = alice.got(RequestReceived, "INVITE")[-1:]
    assert isinstance(received[1], RequestReceived)
    net.alice.respond(received[1].transaction, make_response(offer.request, 481), net.now)
    net.deliver()
    [answer] = of(bob, RefreshAnswered)
    assert isinstance(answer, RefreshAnswered) and answer.dialog_gone


# -- UAS ----------------------------------------------------------------------------------------


def test_no_ack_ends_the_call_with_bye_and_timeout() -> None:
    net = uac_and_uas()
    never = lose("ACK", times=1000)
    call_answered(net, drop=never)
    alice, bob = caller_callee(net)
    net.run(100.0, drop=never)
    assert net.times("BYE", "bob") == [2.0 + TIMEOUT]
    assert [e.reason for e in of(bob, CallEnded)] == ["timeout"]  # type: ignore[attr-defined]
    assert [e.reason for e in of(alice, CallEnded)] == ["bye"]  # type: ignore[attr-defined]
    assert session(bob).state is State.TERMINATED and bob.ua.get_timer() is None


def test_the_sdp_answer_in_the_ack_and_a_bye_before_it() -> None:
    net = uac_and_uas()
    call_answered(net, drop=lose("ACK"))
    alice, bob = caller_callee(net)
    ack = request(session(alice).ack.serialize())  # type: ignore[union-attr]
    ack.body = ALICE_SDP
    net.alice.send_stateless(ack, net.to_bob)
    net.deliver()
    [acked] = of(bob, AckReceived)
    assert isinstance(acked, AckReceived) and acked.first and acked.body == ALICE_SDP
    # A second call: the caller hangs up before its ACK arrives.
    net2 = uac_and_uas()
    call_answered(net2, drop=lose("ACK"))
    alice2, bob2 = caller_callee(net2)
    session(alice2).hangup(net2.now)
    net2.deliver()
    assert [e.reason for e in of(bob2, CallEnded)] == ["bye"]  # type: ignore[attr-defined]
    assert session(bob2).get_timer() is None  # no 2xx resent for a call that is over


def test_uas_api_after_the_end_and_in_the_wrong_state() -> None:
    net, alice, bob = answered()
    s = session(bob)
    s.ring(net.now)
    s.answer(net.now)
    s.reject(net.now, 486)
    assert s.state is State.CONFIRMED
    s.close("error")
    s.close("again")
    bob.drain()
    assert [e.reason for e in of(bob, CallEnded)] == ["error"]  # type: ignore[attr-defined]
    net.deliver()
    assert len(net.wire) == 5  # nothing sent by any of it
    s.handle_timer(net.now + 100)
    s.ack_received(request(session(alice).ack.serialize()))  # type: ignore[union-attr]
    assert s.state is State.TERMINATED


def test_ring_with_early_media_and_a_contact_of_our_own() -> None:
    net = uac_and_uas("tcp")
    alice, bob = caller_callee(net)
    alice.call()
    net.deliver()
    session(bob).ring(net.now, 183, BOB_SDP)
    session(bob).answer(net.now)
    net.deliver()
    [progress] = [w.message for w in net.wire if describe(w.message) == "183 INVITE"]
    assert isinstance(progress, Response) and progress.body == BOB_SDP
    assert progress.headers.get("Content-Type") == "application/sdp"
    [ok] = [w.message for w in net.wire if describe(w.message) == "200 INVITE"]
    assert isinstance(ok, Response) and ok.headers.get("Contact") == (
        "<sip:127.0.0.1:5070;transport=tcp>"
    )
    assert alice.outcomes() == ["ProvisionalReceived", "CallAnswered"]


def test_a_contact_naming_another_transport_than_the_invites() -> None:
    """A call another node proxied to us over TCP from a TLS caller: our Contact names TLS,
    the caller's transport, not the hop's."""
    net = uac_and_uas("tcp")
    alice, bob = caller_callee(net)
    alice.call()
    net.deliver()
    session(bob).contact_transport = "tls"
    session(bob).answer(net.now, BOB_SDP)
    net.deliver()
    [ok] = [w.message for w in net.wire if describe(w.message) == "200 INVITE"]
    assert ok.headers.get("Contact") == "<sip:127.0.0.1:5070;transport=tls>"


def test_the_proxies_record_route_is_copied_into_the_responses_that_make_the_dialog() -> None:
    """RFC 3261 s12.1.1: behind a proxy (Kamailio's record_route()), the 180 and the 200 carry
    every Record-Route of the INVITE in order, so the caller's ACK and BYE come back through
    it; the 100 (no dialog) does not, and our own BYE follows the route."""
    net = uac_and_uas()
    alice, bob = caller_callee(net)
    alice.call()
    net.deliver()
    s = session(bob)
    routes = ["<sip:10.0.0.1;lr;ftag=x>", "<sip:10.0.0.2;lr>"]
    for value in routes:  # (as if they had come on the wire: two proxies on the way)
        s.request.headers.add("Record-Route", value)
    s.ring(net.now, 100)
    net.deliver()  # (the 100 out before the 180, which would otherwise supersede it)
    s.ring(net.now)
    s.answer(net.now, BOB_SDP)
    net.deliver()
    sent = {describe(w.message): w.message for w in net.wire}
    assert "Record-Route" not in sent["100 INVITE"].headers
    for status in ("180 INVITE", "200 INVITE"):
        assert sent[status].headers.get_all("Record-Route") == routes
    assert s.dialog is not None
    assert [str(r) for r in s.dialog.route_set] == routes


def test_an_invite_that_cannot_make_a_dialog_is_answered_500() -> None:
    net = uac_and_uas()
    alice, bob = caller_callee(net)
    alice.call()
    net.deliver()
    s = session(bob)
    s.request.headers.set("Contact", "*")  # (checked on arrival: this cannot really happen)
    s.ring(net.now)
    s.answer(net.now)
    net.deliver()
    assert alice.statuses("INVITE") == [180, 500]
    assert s.state is State.TERMINATED and bob.ua.dialogs == {}


# -- UAC ------------------------------------------------------------------------------------------


class Rejecting(UserAgent):
    """Bob, answering every INVITE with the next status of `answers` (a 200 at the end)."""

    def __init__(self, net: Network, *answers: tuple[int, dict[str, str]]) -> None:
        super().__init__(net, net.bob, net.to_alice, 5070, tag=BOB_TAG)
        self.answers = list(answers)
        self.invites: list[Request] = []

    def drain(self) -> None:
        while (happened := self.ua.next_event()) is not None:
            self.happened.append((self.net.now, happened))
            if isinstance(happened, InviteReceived):
                incoming = happened.session
                self.invites.append(incoming.request)
                if self.answers:
                    status, headers = self.answers.pop(0)
                    incoming.reject(self.net.now, status, headers=headers)
                else:
                    incoming.answer(self.net.now, BOB_SDP)


def alice_to(*answers: tuple[int, dict[str, str]]) -> tuple[Network, Caller, Rejecting]:
    net = uac_and_uas()
    alice = Caller(net)
    bob = Rejecting(net, *answers)
    return net, alice, bob


def test_s22_2_a_digest_challenge_is_answered_once_per_challenge() -> None:
    server = DigestServer(b"0123456789abcdef0123456789abcdef")
    [challenge] = server.challenge("example.com", 0.0, algorithms=("MD5",))
    net, alice, bob = alice_to(
        (401, {"WWW-Authenticate": challenge}), (407, {"Proxy-Authenticate": challenge})
    )
    alice.call()
    session(alice).credentials = DigestClient("alice", "secret")
    net.run(5.0)
    assert [str(r.cseq) for r in bob.invites] == ["1 INVITE", "2 INVITE", "3 INVITE"]
    assert bob.invites[1].headers.get("Authorization") is not None
    assert bob.invites[2].headers.get("Authorization") is None  # never carried over
    assert bob.invites[2].headers.get("Proxy-Authorization") is not None
    assert len({r.top_via.branch for r in bob.invites}) == 3
    assert alice.outcomes() == ["CallAnswered"]
    assert session(alice).auth_tries == 2 and session(alice).final is not None


def test_a_challenge_we_cannot_answer_or_one_too_many_fails_the_call() -> None:
    server = DigestServer(b"0123456789abcdef0123456789abcdef")
    [challenge] = server.challenge("example.com", 0.0, algorithms=("MD5",))
    bad = (401, {"WWW-Authenticate": 'Basic realm="x"'})
    net, alice, bob = alice_to(bad)
    alice.call()
    session(alice).credentials = DigestClient("alice", "secret")
    net.run(5.0)
    assert [(e.status, e.reason) for e in of(alice, CallFailed)] == [(401, "Unauthorized")]  # type: ignore[attr-defined]
    assert [e.reason for e in of(alice, CallEnded)] == ["rejected"]  # type: ignore[attr-defined]
    again = (401, {"WWW-Authenticate": challenge})
    net, alice, bob = alice_to(again, again, again)
    alice.call()
    session(alice).credentials = DigestClient("alice", "secret")
    net.run(5.0)
    assert len(bob.invites) == 3 and [e.status for e in of(alice, CallFailed)] == [401]  # type: ignore[attr-defined]


def test_rfc4028_422_is_retried_as_the_policy_says() -> None:
    net, alice, bob = alice_to((422, {"Min-SE": "1800"}), (422, {"Min-SE": "3600"}))
    alice.call()
    asked: list[int] = []

    def policy(response: Response) -> dict[str, str] | None:
        asked.append(response.status)
        return {"Session-Expires": "1800", "Min-SE": "1800"} if len(asked) == 1 else None

    session(alice).interval_policy = policy
    net.run(5.0)
    assert asked == [422, 422]
    assert bob.invites[1].headers.get("Session-Expires") == "1800"
    assert [e.status for e in of(alice, CallFailed)] == [422]  # type: ignore[attr-defined]


def test_s9_1_cancel_waits_for_a_provisional() -> None:
    net = uac_and_uas()
    alice, bob = caller_callee(net)
    alice.call()
    alice.cancel()
    net.deliver()
    assert net.flow() == ["0 alice: INVITE"]  # no CANCEL before the far end has the INVITE
    assert session(alice).state is State.CANCELLING
    alice.cancel()  # once only
    session(bob).ring(net.now)
    net.deliver()
    assert [describe(w.message) for w in net.wire] == [
        "INVITE",
        "180 INVITE",
        "CANCEL",
        "200 CANCEL",
        "487 INVITE",
        "ACK",
    ]
    assert [e.reason for e in of(alice, CallEnded)] == ["cancel"]  # type: ignore[attr-defined]
    assert [e.reason for e in of(bob, CallEnded)] == ["cancel"]  # type: ignore[attr-defined]
    assert alice.outcomes() == ["CallFailed", "CallEnded"]  # no progress told once cancelled
    # The dialog is gone on both sides: a request in it is 481 (s12.2.2).
    net.bob.send_request(
        alice.early.create_request("INFO", bob.ua.via(net.to_alice)), net.to_alice, net.now
    )  # type: ignore[union-attr]
    net.deliver()
    assert bob.statuses("INFO") == [481]


def test_s9_1_one_cancel_however_many_provisionals_follow() -> None:
    net, alice, _ = early()
    s = session(alice)
    s.cancel(net.now)
    ringing = make_response(alice.invite, 180, to_tag=BOB_TAG)
    s.invite_response(ringing, net.now)
    s.invite_response(ringing, net.now)
    assert net.alice.stats["sent"] == 2  # the INVITE, one CANCEL


def test_s9_1_a_cancel_no_final_response_follows_gives_up_after_64_t1() -> None:
    net = uac_and_uas()
    alice, bob = caller_callee(net)
    alice.call()
    net.deliver()
    bob.ring()
    net.deliver()
    session(alice).cancel(net.now, {"Reason": "SIP;cause=480"})
    never = lose("487 INVITE", times=1000)
    net.run(100.0, drop=never)
    [cancel] = [w.message for w in net.wire if describe(w.message) == "CANCEL"]
    assert isinstance(cancel, Request) and cancel.headers.get("Reason") == "SIP;cause=480"
    [failed] = of(alice, CallFailed)
    assert isinstance(failed, CallFailed) and (failed.status, failed.response) == (487, None)
    assert failed.session.state is State.TERMINATED and alice.ua.get_timer() is None


def test_timeouts_transport_failures_and_late_2xx() -> None:
    net = uac_and_uas()
    alice, _ = caller_callee(net)
    alice.call()
    net.run(100.0, drop=lambda m: True)
    assert [(e.status, e.reason) for e in of(alice, CallFailed)] == [(408, "Request Timeout")]  # type: ignore[attr-defined]
    net2 = uac_and_uas("tcp")
    alice2, _ = caller_callee(net2)
    alice2.call()
    net2.alice.transport_error(net2.to_bob, net2.now)
    net2.deliver()
    assert [e.status for e in of(alice2, CallFailed)] == [503]  # type: ignore[attr-defined]
    # Ended by us, then the INVITE's 2xx comes again: ACKed again, no event.
    net3, alice3, bob3 = answered()
    session(alice3).hangup(net3.now)
    ok = session(bob3).retransmitter.response  # type: ignore[union-attr]
    net3.bob.send_stateless(ok, net3.to_alice)
    net3.deliver()
    assert [describe(w.message) for w in net3.wire][-4:] == ["BYE", "200 INVITE", "ACK", "200 BYE"]
    assert alice3.outcomes() == ["ProvisionalReceived", "CallAnswered", "CallEnded"]


def test_a_2xx_without_a_to_tag_makes_no_dialog() -> None:
    net = uac_and_uas()
    alice, _ = caller_callee(net)
    alice.call()
    s = session(alice)
    untagged = make_response(alice.invite, 200)
    s.invite_response(untagged, net.now)
    assert s.dialog is None and s.state is State.CALLING and alice.ua.next_event() is None


# -- the UA core ------------------------------------------------------------------------------


def test_out_of_dialog_requests_and_a_standalone_request() -> None:
    net = uac_and_uas()
    alice, _ = caller_callee(net)
    options = request(
        b"OPTIONS sip:bob@127.0.0.1:5070 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKo1\r\n"
        b"From: <sip:alice@127.0.0.1>;tag=a\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: o1\r\n"
        b"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    transaction = alice.ua.send_request(options, net.to_bob, net.now)
    info = request(options.serialize().replace(b"OPTIONS", b"INFO").replace(b"bKo1", b"bKi1"))
    bye = request(options.serialize().replace(b"OPTIONS", b"BYE").replace(b"bKo1", b"bKb1"))
    net.alice.send_request(info, net.to_bob, net.now)
    net.alice.send_request(bye, net.to_bob, net.now)
    no_contact = request(alice.invite.serialize())
    no_contact.headers.set("Contact", "*")
    net.alice.send_request(no_contact, net.to_bob, net.now)
    net.deliver()
    [answered_] = of(alice, RequestAnswered)
    assert isinstance(answered_, RequestAnswered) and answered_.transaction is transaction
    assert answered_.response is not None and answered_.response.status == 200
    assert (alice.statuses("INFO"), alice.statuses("BYE")) == ([405], [481])
    assert alice.statuses("INVITE") == [400]
    assert net.bob.stats["invite_refused_no_usable_contact"] == 1
    lost = alice.ua.send_request(
        request(options.serialize().replace(b"bKo1", b"bKo2")), net.to_bob, net.now
    )
    net.run(100.0, drop=lambda m: True)
    assert [e.response for e in of(alice, RequestAnswered)][1:] == [None]  # type: ignore[attr-defined]
    assert of(alice, RequestAnswered)[1].transaction is lost  # type: ignore[attr-defined]


def test_acks_and_requests_for_no_dialog() -> None:
    net, alice, bob = answered()
    stray = request(session(alice).ack.serialize())  # type: ignore[union-attr]
    stray.headers.set("Call-ID", "other")
    net.bob.send_stateless(stray, net.to_alice)  # (to Alice, whose helper takes any ACK)
    broken = request(session(alice).ack.serialize())  # type: ignore[union-attr]
    broken.headers.set("To", "<")
    assert bob.ua._find_dialog(broken) is None
    net.deliver()
    assert len(alice.got(EndpointAck)) == 1 and of(alice, AckReceived) == []  # ignored


def test_contact_and_via_use_the_listeners_port() -> None:
    net = uac_and_uas()
    core = AgentCore(
        net.alice, "192.0.2.1", 5060, local_port={"tcp": 5061, "tls": 5062}.__getitem__
    )
    tls = net.to_bob.__class__("tls", "192.0.2.2", 5061)
    assert str(core.contact(tls, secure=True)) == "<sips:192.0.2.1:5062;transport=tls>"
    assert str(core.via(net.to_bob.__class__("tcp", "h", 1))) == "SIP/2.0/TCP 192.0.2.1:5061"


# -- the state table ----------------------------------------------------------------------------


def test_the_table_reaches_every_state_and_terminated_is_final() -> None:
    reached = {State.IDLE, State.INCOMING}
    while True:
        more = {to for (frm, _), to in TRANSITIONS.items() if frm in reached} - reached
        if not more:
            break
        reached |= more
    assert reached == set(State)
    assert [pair for pair in TRANSITIONS if pair[0] is State.TERMINATED] == []
    assert all(
        (state, Input.CLOSE) in TRANSITIONS for state in State if state is not State.TERMINATED
    )


def fresh(role: Role, state: State) -> InviteSession:
    net = uac_and_uas()
    alice = Caller(net)
    s = InviteSession(
        alice.ua, role=role, request=alice.invite, peer=net.to_bob, local_tag=ALICE_TAG
    )
    s.state = state
    return s


@given(st.sampled_from(list(State)), st.sampled_from(list(Input)), st.sampled_from(list(Role)))
def test_every_state_input_pair_is_in_the_table_or_changes_nothing(
    state: State, given_input: Input, role: Role
) -> None:
    s = fresh(role, state)
    took = s._step(given_input)
    assert took == ((state, given_input) in TRANSITIONS)
    assert s.state is (TRANSITIONS[(state, given_input)] if took else state)


ACTIONS: dict[str, Callable[[Network, Caller, Callee], None]] = {
    "ring": lambda net, a, b: session(b).ring(net.now),
    "answer": lambda net, a, b: session(b).answer(net.now, BOB_SDP),
    "reject": lambda net, a, b: session(b).reject(net.now, 486),
    "cancel": lambda net, a, b: session(a).cancel(net.now),
    "alice hangs up": lambda net, a, b: (session(a).hangup(net.now), None)[1],
    "bob hangs up": lambda net, a, b: (session(b).hangup(net.now), None)[1],
    "alice refreshes": lambda net, a, b: (session(a).refresh(net.now), None)[1],
    "bob re-invites": lambda net, a, b: (session(b).refresh(net.now, body=BOB_SDP), None)[1],
    "alice refers": lambda net, a, b: (session(a).refer(net.now, "<sip:c@127.0.0.1>"), None)[1],
    "deliver": lambda net, a, b: (net.deliver(), None)[1],
    "lose one": lambda net, a, b: (net.deliver(drop=lambda m: True), None)[1],
    "wait": lambda net, a, b: net.run(net.now + 1.0),
}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(sorted(ACTIONS)), max_size=12))
def test_any_call_sequence_ends_with_no_session_stuck(actions: list[str]) -> None:
    # Whatever both applications do, in any order, with losses: nothing raises, and once time
    # passes no session is left Answered, Cancelling or Ending - those always have a deadline.
    net = uac_and_uas()
    alice, bob = caller_callee(net)
    accept_every_offer(alice, ALICE_SDP)
    accept_every_offer(bob, BOB_SDP)
    alice.call()
    net.deliver()
    for action in actions:
        ACTIONS[action](net, alice, bob)
    net.run(net.now + 200.0)
    for s in (session(alice), session(bob)):
        assert s.state not in (State.ANSWERED, State.CANCELLING, State.ENDING), actions
        if s.state is State.TERMINATED:
            assert s.get_timer() is None and s not in s.agent.dialogs.values()
    ended = [e for _, e in alice.happened + bob.happened if isinstance(e, CallEnded)]
    assert len(ended) == len({id(e.session) for e in ended})  # CallEnded once per session


def test_a_provisional_overtaken_by_the_2xx_tells_nothing() -> None:
    net, alice, _ = answered()
    before = alice.outcomes()
    session(alice).invite_response(make_response(alice.invite, 183, to_tag=BOB_TAG), net.now)
    alice.drain()
    assert alice.outcomes() == before and session(alice).state is State.CONFIRMED
