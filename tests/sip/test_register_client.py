"""The REGISTER client (`sip/ua/register.py`) with fake time: RFC 3665 section 2 as the
registrar answers it (2.1 successful new registration with its 401 challenge, 2.2 an update, 2.4
cancellation, 2.5 unsuccessful registration), then the refresh before expiry, the backoff on
failure, challenges answered at most twice in a row, and the state table under Hypothesis.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sipbridge.sip.digest import DigestClient, DigestServer
from sipbridge.sip.headers import parse_address, parse_via
from sipbridge.sip.message import Request, make_response
from sipbridge.sip.ua.register import (
    RETRY_MAX_S,
    TRANSITIONS,
    Input,
    RegisterClient,
    Registered,
    RegistrationFailed,
    State,
    granted_expiry,
    refresh_after,
)
from sipbridge.sip.uri import parse_uri

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "biloxi.com"


def client(credentials: DigestClient | None = None, expires: int = 7200) -> RegisterClient:
    """Bob's UA of RFC 3665 s2, at 127.0.0.1: AOR sip:bob@biloxi.com, registrar biloxi.com."""
    return RegisterClient(
        registrar=parse_uri("sip:127.0.0.1:5070"),
        aor=parse_address("Bob <sip:bob@biloxi.com>"),
        contact=parse_uri("sip:bob@127.0.0.1:5060"),
        via=parse_via("SIP/2.0/UDP 127.0.0.1:5060"),
        expires=expires,
        call_id="843817637684230@998sdasdh09",
        from_tag="456248",
        credentials=credentials,
    )


def sent(c: RegisterClient) -> Request:
    [request] = list(iter(c.next_request, None))
    return request


def events(c: RegisterClient) -> list[object]:
    return list(iter(c.next_event, None))


def challenge(request: Request, status: int = 401) -> object:
    [value] = DigestServer(SECRET).challenge(REALM, 0.0, algorithms=("MD5",))
    response = make_response(request, status, to_tag="2493k59kd")
    response.headers.add("WWW-Authenticate" if status == 401 else "Proxy-Authenticate", value)
    return response


def ok(request: Request, expires: str = "7200") -> object:
    response = make_response(request, 200, to_tag="2493k59kd")
    response.headers.add("Contact", f"<sip:bob@127.0.0.1:5060>;expires={expires}")
    return response


def test_rfc3665_s2_1_successful_new_registration() -> None:
    c = client(DigestClient("bob", "zanzibar"))
    assert c.summary == "registering" and c.get_timer() is None
    c.register()
    f1 = sent(c)  # F1 REGISTER Bob -> Registrar
    assert (f1.method, str(f1.cseq), f1.headers.get("Expires")) == (
        "REGISTER",
        "1 REGISTER",
        "7200",
    )
    assert f1.headers.get("Authorization") is None
    assert f1.headers.get("Contact") == "<sip:bob@127.0.0.1:5060>"
    assert (f1.from_.tag, f1.to.tag, f1.call_id) == ("456248", None, "843817637684230@998sdasdh09")
    c.response_received(f1, challenge(f1), 0.0)  # type: ignore[arg-type]  # F2 401
    f3 = sent(c)  # F3 REGISTER with credentials, CSeq 2, same Call-ID (s10.2.4)
    assert str(f3.cseq) == "2 REGISTER" and f3.call_id == f1.call_id
    assert (f3.headers.get("Authorization") or "").startswith("Digest ")
    assert f3.top_via.branch != f1.top_via.branch
    assert events(c) == [] and c.state is State.REGISTERING
    c.response_received(f3, ok(f3), 1.0)  # type: ignore[arg-type]  # F4 200 OK
    assert events(c) == [Registered(granted=7200)]
    assert c.state is State.REGISTERED and c.summary == "registered"
    assert c.get_timer() == 1.0 + 7200 - 30  # refreshed 30 s before it expires
    # The refresh answers the last challenge again: no new 401 round trip.
    c.handle_timer(100.0)  # too early: nothing
    assert c.next_request() is None
    c.handle_timer(7171.0)
    refresh = sent(c)
    assert str(refresh.cseq) == "3 REGISTER" and refresh.headers.get("Authorization")
    assert c.state is State.REFRESHING and c.summary == "registered"
    c.response_received(refresh, ok(refresh, "3600"), 7171.0)  # type: ignore[arg-type]
    assert events(c) == [Registered(granted=3600)] and c.get_timer() == 7171.0 + 3570


def test_rfc3665_s2_4_cancellation_and_an_unregistration_challenged() -> None:
    c = client(DigestClient("bob", "zanzibar"))
    c.register()
    f1 = sent(c)
    c.response_received(f1, ok(f1), 0.0)  # type: ignore[arg-type]
    c.unregister()
    bye = sent(c)
    assert bye.headers.get("Expires") == "0" and c.summary == "unregistered"
    assert c.get_timer() is None
    c.response_received(bye, challenge(bye, 407), 1.0)  # type: ignore[arg-type]
    again = sent(c)
    assert again.headers.get("Expires") == "0" and again.headers.get("Proxy-Authorization")
    c.response_received(again, ok(again, "0"), 1.0)  # type: ignore[arg-type]
    assert c.state is State.CLOSED and events(c) == [Registered(granted=7200)]
    c.register()  # closed: nothing more
    assert c.next_request() is None


def test_rfc3665_s2_5_unsuccessful_registration_backs_off() -> None:
    c = client(DigestClient("bob", "zanzibar"))
    c.register()
    now, waits = 0.0, []
    for _ in range(7):
        request = sent(c)
        c.response_received(request, challenge(request), now)  # type: ignore[arg-type]
        request = sent(c)
        c.response_received(request, challenge(request), now)  # type: ignore[arg-type]
        request = sent(c)  # a third challenge in a row: the failure counts
        c.response_received(request, challenge(request), now)  # type: ignore[arg-type]
        [failed] = events(c)
        assert isinstance(failed, RegistrationFailed) and failed.status == 401
        assert c.summary == "failed"
        deadline = c.get_timer()
        assert deadline is not None
        waits.append(deadline - now)
        now = deadline
        c.handle_timer(now)
        assert c.state is State.REGISTERING and c.summary == "failed"
    assert waits == [30.0, 60.0, 120.0, 240.0, RETRY_MAX_S, RETRY_MAX_S, RETRY_MAX_S]
    request = sent(c)
    c.response_received(request, ok(request, "60"), now)  # type: ignore[arg-type]
    assert c.get_timer() == now + 30 and c.retry_s == 30.0 and c.failures == 0


def test_no_answer_no_credentials_and_an_unanswerable_challenge() -> None:
    c = client()
    c.register()
    request = sent(c)
    c.response_received(request, None, 5.0)
    assert events(c) == [RegistrationFailed(status=408, reason="no response", retry_in=30.0)]
    c.handle_timer(35.0)
    request = sent(c)
    c.response_received(request, challenge(request), 35.0)  # type: ignore[arg-type]
    [failed] = events(c)
    assert isinstance(failed, RegistrationFailed) and failed.reason == "Unauthorized"
    d = client(DigestClient("bob", "zanzibar"))
    d.register()
    request = sent(d)
    basic = make_response(request, 401)
    basic.headers.add("WWW-Authenticate", 'Basic realm="x"')
    d.response_received(request, basic, 0.0)
    assert [type(e) for e in events(d)] == [RegistrationFailed]


def test_answers_to_replaced_requests_are_ignored() -> None:
    c = client()
    c.register()
    first = sent(c)
    c.unregister()  # before any answer: not bound, so no Expires: 0 - just stop
    assert c.state is State.CLOSED and c.next_request() is None
    c.response_received(first, ok(first), 1.0)  # type: ignore[arg-type]
    assert events(c) == [] and c.get_timer() is None
    c.handle_timer(1000.0)
    assert c.next_request() is None


def test_refresh_after() -> None:
    assert (refresh_after(3600), refresh_after(60), refresh_after(61)) == (3570, 30, 31)


@given(st.sampled_from(list(State)), st.sampled_from(list(Input)))
def test_every_state_input_pair_is_in_the_table_or_changes_nothing(
    state: State, given_input: Input
) -> None:
    c = client()
    c.state = state
    took = c._step(given_input)
    assert took == ((state, given_input) in TRANSITIONS)
    assert c.state is (TRANSITIONS[(state, given_input)] if took else state)


def test_the_granted_expiry_from_contact_expires_or_asked() -> None:
    c = client()
    c.register()
    request = sent(c)
    answer = make_response(request, 200)
    answer.headers.add("Contact", "<sip:bob@127.0.0.1:5060>;expires=soon")
    answer.headers.add("Expires", " 900 ")
    assert granted_expiry(answer, 7200) == 900
    answer.headers.set("Expires", "never")
    assert granted_expiry(answer, 7200) == 7200
