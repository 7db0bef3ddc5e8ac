"""Admission of new requests per source address (sip/admission.py, issue 17 s3): a token bucket
for INVITE and REGISTER, 503 beyond it, silence for a flood, `allow_from`, bounded memory. Time is
an argument."""

from __future__ import annotations

import ipaddress

import pytest

from sipbridge.sip.admission import Admission, Verdict, source_key
from sipbridge.sip.endpoint import Peer, SipEndpoint


def verdicts(admission: Admission, count: int, now: float, source: str = "192.0.2.1") -> list[str]:
    return [admission.admit(source, "INVITE", now).value for _ in range(count)]


def test_a_burst_then_refusals_then_silence() -> None:
    admission = Admission(rate=10.0, burst=5.0, drop_after=3)
    assert verdicts(admission, 10, 0.0) == ["admit"] * 5 + ["refuse"] * 3 + ["drop"] * 2
    assert admission.admit("192.0.2.2", "INVITE", 0.0) is Verdict.ADMIT  # others unaffected


def test_a_source_is_dropping_from_its_first_drop_until_it_refills() -> None:
    admission = Admission(rate=10.0, burst=2.0, drop_after=2)
    assert not admission.dropping("192.0.2.1", 0.0)  # never seen
    assert verdicts(admission, 4, 0.0) == ["admit"] * 2 + ["refuse"] * 2
    assert admission.dropping("192.0.2.1", 0.0)  # the next would be dropped
    assert admission.admit("192.0.2.1", "INVITE", 0.0) is Verdict.DROP
    assert not admission.dropping("192.0.2.1", 0.05)  # half a token back: refused again
    assert not admission.dropping("192.0.2.2", 0.0)


def test_the_bucket_refills_at_the_rate() -> None:
    admission = Admission(rate=10.0, burst=5.0, drop_after=0)
    verdicts(admission, 5, 0.0)
    assert admission.admit("192.0.2.1", "INVITE", 0.05) is Verdict.REFUSE  # half a token
    assert admission.admit("192.0.2.1", "INVITE", 0.2) is Verdict.ADMIT  # -0.5 + 1.5 tokens
    assert verdicts(admission, 5, 100.0) == ["admit"] * 5  # never above the burst
    assert admission.admit("192.0.2.1", "INVITE", 99.0) is Verdict.DROP  # time going back


def test_only_requests_that_start_something_are_counted() -> None:
    admission = Admission(rate=1.0, burst=1.0, drop_after=0)
    assert admission.admit("192.0.2.1", "REGISTER", 0.0) is Verdict.ADMIT
    for method in ("OPTIONS", "MESSAGE", "SUBSCRIBE"):
        assert admission.admit("192.0.2.1", method, 0.0) is Verdict.ADMIT
    assert admission.admit("192.0.2.1", "INVITE", 0.0) is Verdict.DROP


def test_allow_from() -> None:
    admission = Admission(
        allow_from=[ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32")]
    )
    assert admission.allowed("192.0.2.77") and admission.allowed("[2001:db8::1]")
    assert not admission.allowed("198.51.100.1") and not admission.allowed("not-an-address")
    assert admission.admit("198.51.100.1", "OPTIONS", 0.0) is Verdict.DROP
    assert Admission().allowed("198.51.100.1")


def test_memory_is_bounded() -> None:
    admission = Admission(rate=1.0, burst=1.0, drop_after=0, capacity=2)
    for source in ("a", "b", "c"):
        admission.admit(source, "INVITE", 0.0)
    assert len(admission) == 2
    assert admission.admit("a", "INVITE", 0.0) is Verdict.ADMIT  # forgotten: a full bucket


@pytest.mark.parametrize(
    ("source", "key"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2::1]", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::1", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::1", "::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1"),  # a dual-stack socket's IPv4 caller
        ("[::ffff:192.0.2.1]", "192.0.2.1"),
        ("not:an:address", "not:an:address"),
        ("", ""),
    ],
)
def test_whose_requests_these_are(source: str, key: str) -> None:
    assert source_key(source) == key


def test_an_ipv6_network_shares_one_bucket_and_its_neighbours_do_not() -> None:
    """A host takes any of its /64's addresses at will: a fresh address per request must not
    be a fresh bucket. The next /64 (another subscriber) is not touched."""
    admission = Admission(rate=1.0, burst=3.0, drop_after=2)
    got = [admission.admit(f"2001:db8:0:1::{n:x}", "INVITE", 0.0).value for n in range(1, 8)]
    assert got == ["admit"] * 3 + ["refuse"] * 2 + ["drop"] * 2
    assert admission.dropping("2001:db8:0:1:ffff::9", 0.0)  # another address of the same /64
    assert admission.allowance("[2001:db8:0:1::77]", 0.0) == 0
    assert admission.admit("2001:db8:0:2::1", "INVITE", 0.0) is Verdict.ADMIT
    assert len(admission) == 2
    # an IPv4 caller over a dual-stack socket is the IPv4 address, both ways it can appear
    assert verdicts(admission, 3, 0.0, source="::ffff:192.0.2.1") == ["admit"] * 3
    assert admission.admit("192.0.2.1", "INVITE", 0.0) is Verdict.REFUSE


def test_allow_from_still_looks_at_the_exact_address() -> None:
    admission = Admission(allow_from=[ipaddress.ip_network("2001:db8::1/128")])
    assert admission.allowed("2001:db8::1") and not admission.allowed("2001:db8::2")


@pytest.mark.parametrize(
    "limits", [{"rate": 0}, {"burst": 0.5}, {"drop_after": -1}, {"capacity": 0}]
)
def test_limits_must_make_sense(limits: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="positive"):
        Admission(**limits)  # type: ignore[arg-type]


def invite(n: int, to_tag: str = "") -> bytes:
    tag = f";tag={to_tag}" if to_tag else ""
    return (
        f"INVITE sip:bob@192.0.2.9 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa{n}\r\n"
        f"From: <sip:alice@192.0.2.1>;tag=a\r\nTo: <sip:bob@192.0.2.9>{tag}\r\n"
        f"Call-ID: c{n}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@192.0.2.1>\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_the_endpoint_refuses_with_503_then_drops_and_never_limits_in_dialog() -> None:
    endpoint = SipEndpoint(admission=Admission(rate=1.0, burst=1.0, drop_after=1))
    peer = Peer("udp", "192.0.2.1", 5060)
    for n in range(3):
        endpoint.receive(invite(n), peer, 0.0)
    sent = [data.split(b"\r\n", 1)[0] for data, _ in endpoint.outgoing()]
    assert sent == [b"SIP/2.0 503 Service Unavailable"]  # the first went to the application
    assert (endpoint.stats["refused_flood"], endpoint.stats["dropped_flood"]) == (1, 1)
    # Past the drop threshold its INVITEs are not even parsed: a retransmission of the admitted
    # one too (its sender retransmits again) ...
    endpoint.receive(invite(0), peer, 0.0)
    assert endpoint.stats["dropped_flood"] == 2 and endpoint.stats["malformed"] == 0
    # ... until the bucket refills above it: then a retransmission is absorbed, and a request
    # in a dialog is never limited.
    endpoint.receive(invite(0), peer, 1.0)
    endpoint.receive(invite(9, to_tag="b"), peer, 1.0)
    assert endpoint.stats["dropped_flood"] == 2 and endpoint.stats["retransmissions"] == 1
    stranger = SipEndpoint(admission=Admission(allow_from=[ipaddress.ip_network("10.0.0.0/8")]))
    stranger.receive(invite(0), peer, 0.0)
    assert stranger.outgoing() == [] and stranger.stats["dropped_not_allowed"] == 1


def test_the_endpoint_judges_an_ipv6_network_as_one_source() -> None:
    """The endpoint's admission, with INVITEs from one /64 each from a new address: the second
    is refused with 503 and the third goes unanswered, as from a single address."""
    endpoint = SipEndpoint(admission=Admission(rate=1.0, burst=1.0, drop_after=1))
    for n in range(3):
        endpoint.receive(invite(n), Peer("udp", f"2001:db8:5:6::{n + 1}", 5060), 0.0)
    sent = [data.split(b"\r\n", 1)[0] for data, _ in endpoint.outgoing()]
    assert sent == [b"SIP/2.0 503 Service Unavailable"]
    assert (endpoint.stats["refused_flood"], endpoint.stats["dropped_flood"]) == (1, 1)
