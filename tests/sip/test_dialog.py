"""Dialogs (RFC 3261 s12) and the UAS core's 2xx retransmission (s13.3.1.4), one rule a test.

The messages are RFC 3665 s3.1 ("Successful Session Establishment"), Alice calling Bob through
two proxies that record-route; the numbers in each test are the RFC's."""

from __future__ import annotations

import itertools

import pytest

from sipbridge.sip.dialog import AnswerRetransmitter, Dialog, new_tag
from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.headers import parse_via
from sipbridge.sip.message import Request, Response, parse_message
from sipbridge.sip.transaction import TimerSettings

# RFC 3665 s3.1, F1 as proxy 2 forwards it (two Record-Routes) to Bob.
INVITE = (
    "INVITE sip:bob@client.biloxi.example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP ss2.biloxi.example.com:5060;branch=z9hG4bKnashds8\r\n"
    "Max-Forwards: 68\r\n"
    "Record-Route: <sip:ss2.biloxi.example.com;lr>\r\n"
    "Record-Route: <sip:ss1.atlanta.example.com;lr>\r\n"
    "From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
    "To: Bob <sip:bob@biloxi.example.com>\r\n"
    "Call-ID: 3848276298220188511@atlanta.example.com\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:alice@client.atlanta.example.com;transport=udp>\r\n"
    "Content-Length: 0\r\n\r\n"
)
# Bob's 200 (F9 of s3.1) as it reaches Alice: the Record-Routes in the order of the INVITE.
OK = (
    "SIP/2.0 200 OK\r\n"
    "Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9;received=192.0.2.101\r\n"
    "Record-Route: <sip:ss2.biloxi.example.com;lr>\r\n"
    "Record-Route: <sip:ss1.atlanta.example.com;lr>\r\n"
    "From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
    "To: Bob <sip:bob@biloxi.example.com>;tag=314159\r\n"
    "Call-ID: 3848276298220188511@atlanta.example.com\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:bob@client.biloxi.example.com>\r\n"
    "Content-Length: 0\r\n\r\n"
)
VIA = parse_via("SIP/2.0/UDP client.atlanta.example.com:5060")


def request(text: str) -> Request:
    message = parse_message(text.encode())
    assert isinstance(message, Request)
    return message


def response(text: str) -> Response:
    message = parse_message(text.encode())
    assert isinstance(message, Response)
    return message


def alice_invite() -> Request:
    """F1 as Alice sends it: no Record-Route yet."""
    return request(INVITE.replace("sip:bob@client.biloxi", "sip:bob@biloxi"))


def in_dialog(method: str, seq: int, *extra: str) -> Request:
    """A request from Alice inside the dialog of INVITE (Bob is the UAS)."""
    return request(
        f"{method} sip:bob@client.biloxi.example.com SIP/2.0\r\n"
        "Via: SIP/2.0/UDP ss2.biloxi.example.com:5060;branch=z9hG4bKnashds9\r\n"
        "Max-Forwards: 69\r\n"
        "From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
        "To: Bob <sip:bob@biloxi.example.com>;tag=314159\r\n"
        "Call-ID: 3848276298220188511@atlanta.example.com\r\n"
        f"CSeq: {seq} {method}\r\n" + "".join(f"{line}\r\n" for line in extra) + "\r\n"
    )


def bob() -> Dialog:
    return Dialog.as_uas(request(INVITE), "314159")


def alice() -> Dialog:
    return Dialog.as_uac(alice_invite(), response(OK))


# -- creating a dialog (s12.1) ---------------------------------------------------------------


def test_the_uas_dialog_takes_its_state_from_the_invite() -> None:
    """s12.1.1: remote target = Contact, route set = Record-Route in order, remote sequence
    number = the INVITE's CSeq, remote tag = From tag; our To gets our tag."""
    dialog = bob()
    assert dialog.id == ("3848276298220188511@atlanta.example.com", "314159", "9fxced76sl")
    assert str(dialog.remote_target) == "sip:alice@client.atlanta.example.com;transport=udp"
    assert [str(r.uri) for r in dialog.route_set] == [
        "sip:ss2.biloxi.example.com;lr",
        "sip:ss1.atlanta.example.com;lr",
    ]
    assert dialog.remote_seq == 1 and dialog.local_seq == 0
    assert dialog.local_address.tag == "314159" and dialog.remote_address.tag == "9fxced76sl"
    assert not dialog.secure


def test_the_uac_dialog_reverses_the_route_set_and_targets_the_contact() -> None:
    """s12.1.2: route set = Record-Route of the response in reverse order; remote target = its
    Contact; local sequence number = the INVITE's CSeq; a 2xx confirms the dialog."""
    dialog = alice()
    assert dialog.id == ("3848276298220188511@atlanta.example.com", "9fxced76sl", "314159")
    assert [str(r.uri) for r in dialog.route_set] == [
        "sip:ss1.atlanta.example.com;lr",
        "sip:ss2.biloxi.example.com;lr",
    ]
    assert str(dialog.remote_target) == "sip:bob@client.biloxi.example.com"
    assert dialog.local_seq == 1 and dialog.remote_seq is None
    assert dialog.confirmed


def test_an_early_dialog_is_not_confirmed_and_without_contact_targets_the_request_uri() -> None:
    """s12.1.2: a 1xx with a To tag makes an early dialog; a response without a Contact leaves
    the Request-URI as the only target we have."""
    ringing = OK.replace("200 OK", "180 Ringing").replace(
        "Contact: <sip:bob@client.biloxi.example.com>\r\n", ""
    )
    dialog = Dialog.as_uac(alice_invite(), response(ringing))
    assert not dialog.confirmed
    assert dialog.remote_target == alice_invite().uri


def test_a_sips_request_uri_makes_a_secure_dialog() -> None:
    """s12.1.1 / s12.1.2: the dialog is secure when the request was sent over TLS to a SIPS
    Request-URI."""
    sips = INVITE.replace("INVITE sip:bob@", "INVITE sips:bob@")
    assert Dialog.as_uas(request(sips), "t").secure
    assert Dialog.as_uac(request(sips), response(OK)).secure


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (("Contact: <sip:alice@client.atlanta.example.com;transport=udp>\r\n", ""), "Contact"),
        (
            ("Contact: <sip:alice@client.atlanta.example.com;transport=udp>", "Contact: *"),
            "Contact",
        ),
        ((";tag=9fxced76sl", ""), "tag"),
    ],
    ids=["no-contact", "wildcard-contact", "from-without-tag"],
)
def test_an_invite_that_cannot_make_a_dialog_is_refused_400(
    change: tuple[str, str], reason: str
) -> None:
    """s8.1.1.8: an INVITE must carry one Contact (a SIP URI, not `*`) to be the remote target;
    s8.1.1.3: the From tag identifies the caller's side of the dialog."""
    with pytest.raises(SipProtocolError) as refused:
        Dialog.as_uas(request(INVITE.replace(*change)), "t")
    assert refused.value.status == 400 and reason in str(refused.value)


def test_a_dialog_creating_response_without_to_tag_is_refused() -> None:
    """s12.1.2: the remote tag comes from the response's To; without one there is no dialog."""
    with pytest.raises(SipProtocolError) as refused:
        Dialog.as_uac(alice_invite(), response(OK.replace(";tag=314159", "")))
    assert refused.value.status == 400


# -- requests within a dialog: the UAS side (s12.2.2) -----------------------------------------


def test_a_lower_cseq_is_refused_500_and_higher_ones_advance() -> None:
    """s12.2.2: a CSeq lower than the remote sequence number is out of order -> 500; otherwise
    the remote sequence number becomes the request's (gaps are allowed)."""
    dialog = bob()
    dialog.check_request(in_dialog("INFO", 5))
    assert dialog.remote_seq == 5
    with pytest.raises(SipProtocolError) as refused:
        dialog.check_request(in_dialog("INFO", 4))
    assert refused.value.status == 500
    assert dialog.remote_seq == 5


def test_ack_and_cancel_do_not_move_the_remote_sequence_number() -> None:
    """s12.2.2 with s13.2.2.4 / s9.1: ACK and CANCEL carry the CSeq number of the INVITE they
    belong to; they neither count as new requests nor are refused as old ones."""
    dialog = bob()
    dialog.check_request(in_dialog("INFO", 3))
    dialog.check_request(in_dialog("ACK", 1))
    dialog.check_request(in_dialog("CANCEL", 1))
    assert dialog.remote_seq == 3


def test_the_first_request_sets_an_empty_remote_sequence_number() -> None:
    """s12.2.2: a UAC's dialog has no remote sequence number until the peer's first request."""
    dialog = alice()
    dialog.check_request(in_dialog("BYE", 231))
    assert dialog.remote_seq == 231


def test_target_refresh_requests_replace_the_remote_target() -> None:
    """s12.2.2 and RFC 3311 s5.2: a re-INVITE or UPDATE with a Contact replaces the remote
    target; other requests (BYE, INFO) and a wildcard Contact leave it."""
    dialog = bob()
    original = dialog.remote_target
    dialog.check_request(in_dialog("INFO", 2, "Contact: <sip:alice@elsewhere.example.com>"))
    assert dialog.remote_target == original
    dialog.check_request(in_dialog("INVITE", 3, "Contact: *"))
    assert dialog.remote_target == original
    dialog.check_request(in_dialog("INVITE", 4))  # a re-INVITE without Contact
    assert dialog.remote_target == original
    dialog.check_request(in_dialog("UPDATE", 5, "Contact: <sip:alice@moved.example.com>"))
    assert str(dialog.remote_target) == "sip:alice@moved.example.com"


# -- requests within a dialog: the UAC side (s12.2.1.1) ---------------------------------------


def test_an_in_dialog_request_goes_to_the_remote_target_through_the_loose_route_set() -> None:
    """s12.2.1.1: Request-URI = remote target, Route = the route set in order when its first
    URI has `lr`; From/To/Call-ID of the dialog; CSeq one more than the last; a new branch."""
    dialog = alice()
    bye = dialog.create_request("BYE", VIA)
    assert str(bye.uri) == "sip:bob@client.biloxi.example.com"
    assert bye.headers.get_all("Route") == [
        "<sip:ss1.atlanta.example.com;lr>",
        "<sip:ss2.biloxi.example.com;lr>",
    ]
    assert bye.cseq.seq == 2 and bye.cseq.method == "BYE"
    assert bye.from_.tag == "9fxced76sl" and bye.to.tag == "314159"
    assert bye.call_id == "3848276298220188511@atlanta.example.com"
    assert bye.top_via.branch.startswith("z9hG4bK")
    assert bye.headers.get("Contact") is None  # BYE refreshes no target
    again = dialog.create_request("INFO", VIA)
    assert again.cseq.seq == 3 and again.top_via.branch != bye.top_via.branch


def test_a_strict_route_set_puts_the_first_route_in_the_request_uri() -> None:
    """s12.2.1.1: with a strict router first (no `lr`), the Request-URI is that route's URI and
    the remote target goes last in Route."""
    strict = OK.replace(
        "Record-Route: <sip:ss1.atlanta.example.com;lr>",
        "Record-Route: <sip:ss1.atlanta.example.com>",
    )
    dialog = Dialog.as_uac(alice_invite(), response(strict))
    bye = dialog.create_request("BYE", VIA)
    assert str(bye.uri) == "sip:ss1.atlanta.example.com"
    assert bye.headers.get_all("Route") == [
        "<sip:ss2.biloxi.example.com;lr>",
        "<sip:bob@client.biloxi.example.com>",
    ]


def test_ack_reuses_the_invite_cseq_and_target_refreshes_carry_our_contact() -> None:
    """s13.2.2.4: the ACK of a 2xx has the INVITE's CSeq number; s12.2.1.1 / s8.1.1.8: a
    re-INVITE or UPDATE carries our Contact (it may refresh our target), a BYE does not."""
    dialog = alice()
    contact = parse_message(OK.encode()).contacts[0]
    ack = dialog.create_request("ACK", VIA, contact)
    assert ack.cseq.seq == 1 and ack.headers.get("Contact") is None
    reinvite = dialog.create_request("INVITE", VIA, contact)
    assert reinvite.cseq.seq == 2 and reinvite.headers.get("Contact") == str(contact)
    update = dialog.create_request("UPDATE", VIA, contact)
    assert update.headers.get("Contact") == str(contact)
    assert dialog.create_request("BYE", VIA, contact).headers.get("Contact") is None


def test_tags_are_random_and_long_enough() -> None:
    """s19.3: a tag must be globally unique and cryptographically random, at least 32 bits."""
    tags = {new_tag() for _ in range(100)}
    assert len(tags) == 100
    assert all(len(tag) >= 8 and int(tag, 16) >= 0 for tag in tags)


# -- the UAS core resends its 2xx until the ACK (s13.3.1.4) -----------------------------------


def test_the_2xx_is_resent_at_t1_doubling_to_t2_until_64_t1() -> None:
    """s13.3.1.4: resent after T1, then at intervals doubling up to T2; at 64*T1 without an
    ACK the UAS gives up (and should end the dialog with BYE)."""
    timers = TimerSettings()
    answer = response(OK)
    retransmitter = AnswerRetransmitter(answer, 0.0, timers)
    resent_at = []
    for _ in range(100):  # bounded: far more turns than the 64*T1 schedule has
        timer = retransmitter.get_timer()
        if timer is None:
            break
        assert retransmitter.handle_timer(timer - 0.001) is None  # nothing before its time
        if retransmitter.handle_timer(timer) is answer:
            resent_at.append(timer)
    assert retransmitter.timed_out
    assert resent_at[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]  # 0.5, 1, 2, 4, then T2 = 4 apart
    assert all(b - a == 4.0 for a, b in itertools.pairwise(resent_at[3:]))
    assert resent_at[-1] < timers.timeout
    assert retransmitter.handle_timer(timers.timeout + 1) is None


def test_the_ack_stops_the_retransmissions() -> None:
    """s13.3.1.4: once the ACK arrives, the 2xx is no longer resent and no timer is left."""
    retransmitter = AnswerRetransmitter(response(OK), 0.0, TimerSettings())
    assert retransmitter.handle_timer(0.5) is not None
    retransmitter.ack_received()
    assert retransmitter.get_timer() is None
    assert retransmitter.handle_timer(1.5) is None
    assert not retransmitter.timed_out
