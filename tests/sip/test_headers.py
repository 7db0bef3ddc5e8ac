"""Structured header values (src/sipbridge/sip/headers.py): RFC 3261 s20 and s25.1."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.sip import headers as sipheaders
from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.headers import (
    MAGIC_COOKIE,
    Address,
    CSeq,
    Via,
    _parse_via_pattern,
    param_value,
    parse_address,
    parse_cseq,
    parse_params,
    parse_via,
    quote,
    split_list,
    tagged_address,
    unquote,
)
from sipbridge.sip.uri import parse_uri

FUZZ = settings(database=None, deadline=None, max_examples=500)


def status_of(parse: object, text: str) -> int:
    assert callable(parse)
    with pytest.raises(SipProtocolError) as err:
        parse(text)
    return err.value.status


# -- name-addr / addr-spec ---------------------------------------------------------------------


def test_rfc3261_from_examples() -> None:
    # RFC 3261 s20.20 (From), header values as in the RFC
    bell = parse_address('"A. G. Bell" <sip:agb@bell-telephone.com> ;tag=a48s')
    assert bell.display_name == "A. G. Bell"
    assert bell.uri == parse_uri("sip:agb@bell-telephone.com")
    assert bell.tag == "a48s"
    phone = parse_address("sip:+12125551212@server.phone2net.com;tag=887s")
    assert phone.display_name is None
    assert phone.uri.user == "+12125551212" and phone.uri.params == ()
    assert phone.tag == "887s"  # an addr-spec's parameters belong to the header (s20.10)
    anonymous = parse_address("Anonymous <sip:c8oqz84zk7z@privacy.org>;tag=hyh8")
    assert (anonymous.display_name, anonymous.tag) == ("Anonymous", "hyh8")


def test_rfc3261_to_examples() -> None:
    # RFC 3261 s20.39 (To)
    operator = parse_address("The Operator <sip:operator@cs.columbia.edu>;tag=287447")
    assert operator.display_name == "The Operator"
    assert operator.tag == "287447"
    assert parse_address("sip:+12125551212@server.phone2net.com").tag is None


def test_rfc3261_contact_example() -> None:
    # RFC 3261 s20.10 (Contact): two values, parameters with LWS around ';'
    value = (
        '"Mr. Watson" <sip:watson@worcester.bell-telephone.com>;q=0.7; expires=3600, '
        '"Mr. Watson" <mailto:watson@bell-telephone.com> ;q=0.1'
    )
    sip, mail = (parse_address(item) for item in split_list(value))
    assert sip.display_name == mail.display_name == "Mr. Watson"
    assert sip.params == (("q", "0.7"), ("expires", "3600"))
    assert str(mail.uri) == "mailto:watson@bell-telephone.com"
    assert param_value(mail.params, "Q") == "0.1"
    assert parse_address(" * ").wildcard  # s10.2.2: Contact: *


def test_rfc5626_contact_with_quoted_angle_brackets() -> None:
    # RFC 5626 s3.2 Contact, joined onto one line: '<' and '>' inside a quoted parameter
    value = '<sip:line1@192.0.2.2;transport=tcp>; reg-id=1;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'  # noqa: E501
    (item,) = split_list(value)
    contact = parse_address(item)
    assert contact.uri == parse_uri("sip:line1@192.0.2.2;transport=tcp")
    assert contact.params == (
        ("reg-id", "1"),
        ("+sip.instance", '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'),
    )
    assert unquote(param_value(contact.params, "+sip.instance") or "").startswith("<urn:uuid:")


def test_name_addr_keeps_uri_and_header_parameters_apart() -> None:
    address = parse_address("<sip:alice@atlanta.com;transport=tcp>;expires=3600;tag=x")
    assert address.uri.params == (("transport", "tcp"),)
    assert address.params == (("expires", "3600"), ("tag", "x"))


def test_display_names() -> None:
    assert parse_address("caller<sip:caller@example.com>").display_name == "caller"
    assert parse_address('"" <sip:a@example.com>').display_name == ""
    assert parse_address('"Watson, Thomas" <sip:t@example.org>').display_name == "Watson, Thomas"
    assert parse_address(r'"a \"b\" \\ c" <sip:a@example.com>').display_name == 'a "b" \\ c'
    assert parse_address("Bob   Smith <sip:b@example.com>").display_name == "Bob   Smith"
    assert parse_address("<sip:a@example.com>").display_name is None


def test_with_tag_replaces_an_existing_tag() -> None:
    to = parse_address("Bob <sip:bob@biloxi.com>")
    tagged = to.with_tag("a6c85cf")
    assert str(tagged) == "Bob <sip:bob@biloxi.com>;tag=a6c85cf"
    assert str(tagged.with_tag("x").with_tag("y")) == "Bob <sip:bob@biloxi.com>;tag=y"
    assert to.tag is None  # frozen


# RFC 3261 s4 (the Alice-Bob example) and s24.2 values, plus the serialiser's own forms.
CANONICAL_ADDRESSES = [
    "Bob <sip:bob@biloxi.com>;tag=a6c85cf",
    "Alice <sip:alice@atlanta.com>;tag=1928301774",
    "<sip:alice@pc33.atlanta.com>",
    '"Watson, Thomas" <sip:t.watson@example.org>',
    '"Quoted string \\"\\"" <sip:jdrosen@example.com>;newparam=newvalue;secondparam;q=0.33',
    "<sip:bob@192.0.2.4;transport=tcp>;expires=60",
    "<urn:service:sos>",
    "<tel:+1-201-555-0123>",
    "*",
]


@pytest.mark.parametrize("text", CANONICAL_ADDRESSES)
def test_canonical_address_round_trips(text: str) -> None:
    address = parse_address(text)
    assert str(address) == text
    assert parse_address(str(address)) == address


def test_addr_spec_serialises_as_name_addr() -> None:
    address = parse_address("sip:+12125551212@server.phone2net.com;tag=887s")
    assert str(address) == "<sip:+12125551212@server.phone2net.com>;tag=887s"
    assert parse_address(str(address)) == address


def test_display_name_with_outer_spaces_round_trips() -> None:
    address = parse_address('" Alice " <sip:alice@atlanta.com>')
    assert address.display_name == " Alice "
    assert parse_address(str(address)) == address


@pytest.mark.parametrize(
    "text",
    [
        "",
        '"unterminated <sip:a@example.com>',
        '"Watson" sip:t.watson@example.org',  # quoted name without <URI>
        "<sip:a@example.com",
        "<sip:a@example.com> garbage",
        "Bell, Alexander <sip:a.g.bell@example.com>",  # RFC 4475 s3.1.2.15
        'Mr "J" <sip:a@example.com>',
        "sip:a b@example.com",
        "sip:a@example.com;tag=",
        "<sip:a@example.com>;ta g=1",
        '<sip:a@example.com>;"tag"=1',
        '<sip:a@example.com>;tag="1',
        "<sip:a@example.com;=x>",
        "<>",
        ";tag=1",
    ],
)
def test_malformed_addresses_get_400(text: str) -> None:
    assert status_of(parse_address, text) == 400


@pytest.mark.parametrize(
    "text",
    ['"Joe" <sip:joe@example.org>;;;;', '<sip:joe@example.org>;a="x";', "<sip:j@example.org>;;a"],
)
def test_empty_header_parameters_get_400(text: str) -> None:
    # RFC 4475 s3.1.2.1 badinv01 Contact, and the same stray ';' after a quoted value
    assert status_of(parse_address, text) == 400


# -- quoted strings, lists, parameters ---------------------------------------------------------


def test_quote_and_unquote() -> None:
    assert quote('say "hi" \\o/') == '"say \\"hi\\" \\\\o/"'
    assert unquote('"say \\"hi\\" \\\\o/"') == 'say "hi" \\o/'
    assert unquote("token") == "token"  # not quoted: unchanged
    assert unquote('"') == '"'
    assert unquote('"a\\"') == "a"  # a dangling backslash escapes nothing


@FUZZ
@given(st.text())
def test_unquote_inverts_quote(text: str) -> None:
    assert unquote(quote(text)) == text


@pytest.mark.parametrize(
    ("value", "items"),
    [
        # RFC 3261 s20.34 (Route) and s20.30 (Record-Route)
        (
            "<sip:bigbox3.site3.atlanta.com;lr>, <sip:server10.biloxi.com;lr>",
            ["<sip:bigbox3.site3.atlanta.com;lr>", "<sip:server10.biloxi.com;lr>"],
        ),
        # RFC 3261 s20.5 (Allow)
        ("INVITE, ACK, OPTIONS, CANCEL, BYE", ["INVITE", "ACK", "OPTIONS", "CANCEL", "BYE"]),
        # commas inside quotes and inside <...> do not split
        (
            '"Watson, Thomas" <sip:t@example.org>, <sip:a,b@example.com>;q=0.5',
            ['"Watson, Thomas" <sip:t@example.org>', "<sip:a,b@example.com>;q=0.5"],
        ),
        ('"a \\", b" <sip:x@example.com>, c', ['"a \\", b" <sip:x@example.com>', "c"]),
        ("  one  ,\ttwo\t", ["one", "two"]),
        ("", []),
    ],
)
def test_split_list(value: str, items: list[str]) -> None:
    assert list(split_list(value)) == items


def test_split_list_refuses_an_unterminated_quote() -> None:
    assert status_of(lambda v: list(split_list(v)), '"a, b <sip:x@y>, c') == 400


def test_parse_params() -> None:
    assert parse_params(';a=1;b;c="x;y";D = 2') == (
        ("a", "1"),
        ("b", None),
        ("c", '"x;y"'),
        ("D", "2"),
    )
    assert parse_params("a=1") == (("a", "1"),)  # the leading ';' is optional
    assert parse_params("") == ()
    assert param_value(parse_params(";Lr"), "lr") == ""
    assert param_value(parse_params(";a=1"), "b") is None


@pytest.mark.parametrize("text", [";a=", ";=1", ";a b=1", ';a="1', ";a,b", ";a@b=1"])
def test_malformed_parameters_get_400(text: str) -> None:
    assert status_of(parse_params, text) == 400


# -- Via ---------------------------------------------------------------------------------------


def test_rfc3261_via_examples() -> None:
    # RFC 3261 s20.42 examples (unfolded); the third also with LWS around its separators
    erlang = parse_via("SIP/2.0/UDP erlang.bell-telephone.com:5060;branch=z9hG4bK87asdks7")
    assert (erlang.protocol, erlang.transport) == ("SIP/2.0", "UDP")
    assert (erlang.host, erlang.port, erlang.branch) == (
        "erlang.bell-telephone.com",
        5060,
        "z9hG4bK87asdks7",
    )
    assert erlang.is_rfc3261
    received = parse_via("SIP/2.0/UDP 192.0.2.1:5060 ;received=192.0.2.207 ;branch=z9hG4bK77asjd")
    assert received.received == "192.0.2.207" and received.branch == "z9hG4bK77asjd"
    plain = "SIP/2.0/UDP first.example.com:4000;ttl=16;maddr=224.2.0.1;branch=z9hG4bKa7c6a8dlze.1"
    spaced = "SIP / 2.0 / UDP first.example.com: 4000;ttl=16 ;maddr=224.2.0.1 ;branch=z9hG4bKa7c6a8dlze.1"  # noqa: E501
    assert parse_via(spaced) == parse_via(plain)
    assert str(parse_via(spaced)) == plain


def test_rfc3581_rport() -> None:
    # RFC 3581 s4 example: the request asks for rport, the server fills it in with received
    request = parse_via("SIP/2.0/UDP 10.1.1.1:4540;rport;branch=z9hG4bKkjshdyff")
    assert request.rport == ""
    answered = request.with_params(received="192.0.2.1", rport="9988")
    assert (answered.received, answered.rport, answered.branch) == (
        "192.0.2.1",
        "9988",
        "z9hG4bKkjshdyff",
    )
    assert str(answered) == (
        "SIP/2.0/UDP 10.1.1.1:4540;branch=z9hG4bKkjshdyff;received=192.0.2.1;rport=9988"
    )
    assert parse_via("SIP/2.0/UDP 10.1.1.1:4540").rport is None


def test_via_details() -> None:
    ipv6 = parse_via("SIP/2.0/TCP [2001:db8::9:1]:6050;branch=z9hG4bKas3-111")
    assert (ipv6.host, ipv6.port) == ("[2001:db8::9:1]", 6050)
    assert parse_via("sip/2.0/udp Host.Example.COM").sent_by == ("host.example.com", None)
    assert parse_via("SIP/2.0/UDP h").protocol == "SIP/2.0"
    assert parse_via("SIP/2.0/tls h").transport == "TLS"
    assert parse_via("SIP/2.0/UDP h;branch=1234").is_rfc3261 is False  # RFC 2543 peer
    assert MAGIC_COOKIE == "z9hG4bK"
    assert isinstance(parse_via("SIP/2.0/UDP h"), Via)


VIAS = [
    "SIP/2.0/UDP erlang.bell-telephone.com:5060;branch=z9hG4bK87asdks7",  # RFC 3261 s20.42
    "SIP/2.0/TCP client.atlanta.example.com:5060;branch=z9hG4bK74bf9;received=192.0.2.101",
    "SIP/2.0/UDP 10.1.1.1:4540;rport;branch=z9hG4bKkjshdyff",  # RFC 3581 s4
    "SIP/2.0/TLS [2001:db8::9:1]:6050;branch=z9hG4bKas3-111",
    "SIP/2.0/UDP 192.0.2.15",
]


@pytest.mark.parametrize(
    "text",
    [
        *VIAS,
        "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-1-0",
        "SIP/2.0/udp host.example.com;branch=z9hG4bK1;received=192.0.2.1;rport=5060",
        "SIP/2.0/UDP 192.0.2.1:5060;",
        "SIP/2.0/UDP 192.0.2.1:65535",
        "SIP/2.0/UDP 192.0.2.1:65536",
        "SIP/2.0/UDP 192.0.2.1:0",
        "SIP/2.0/UDP 192.0.2.1:",
        "SIP/2.0/UDP 192.0.2.1:123456",
        "SIP/2.0/UDP  192.0.2.1",
        "SIP/2.0/UDP 192.0.2.1 ",
        "SIP/2.0/UDP 192.0.2.1 ;branch=z9hG4bK1",
        "SIP/2.0/UDP 192.0.2.1:5060 ;branch=z9hG4bK1",
        "SIP/2.0/UDP 192.0.2.1;;branch=z9hG4bK1",
        "SIP/2.0/UDP 192.0.2.1;branch=",
        "SIP/2.0/UDP host_name",
        "SIP/2.0/UDP ho\u00e9st",
        "SIP/2.0/UDP 192.0.2.1:\u0665\u0660",
        "SIP/2.0/U\u00c9P 192.0.2.1",
        "SIP/2.0/ 192.0.2.1",
        "SIP/2.0/UDP",
        "SIP/2.0/UDP ",
        "SIP/2.0/UDP :5060",
        "SIP/2.0/UDP a\nb",
        "SIP/2.0/UDP a;x=\n",
    ],
)
def test_plain_via_parses_as_the_pattern_does(text: str) -> None:
    """The string-method parse of the common Via (`_parse_plain_via`) gives what the pattern
    gives, or leaves the value to it: the same Via, or the same refusal."""

    def outcome(parse: Callable[[str], Via]) -> Via | int:
        try:
            return parse(text)
        except SipProtocolError as err:
            return err.status

    assert outcome(parse_via) == outcome(_parse_via_pattern)


@given(
    st.text(alphabet="SIP/2.0UDPudp :;=.-[]0123456789abz\t\n\u00e9", max_size=40).map(
        lambda tail: "SIP/2.0/" + tail
    )
)
@FUZZ
def test_plain_via_agrees_with_the_pattern_on_any_text(text: str) -> None:
    def outcome(parse: Callable[[str], Via]) -> Via | int:
        try:
            return parse(text)
        except SipProtocolError as err:
            return err.status

    assert outcome(parse_via) == outcome(_parse_via_pattern)


@pytest.mark.parametrize("text", VIAS)
def test_canonical_via_round_trips(text: str) -> None:
    assert str(parse_via(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SIP/2.0 host",
        "SIP/2.0/UDP",
        "SIP/2.0/UDP ",
        "SIP/2.0/UDPhost",
        "SIP/2.0/UDP host:0",
        "SIP/2.0/UDP host:65536",
        "SIP/2.0/UDP host:123456",
        "SIP/2.0/UDP host:",
        "SIP/2.0/UDP host junk",
        "SIP/2.0/UDP host;branch=",
        "SIP/two/UDP host",
        "SIP/2.0/UDP ho_st",
        "SIP/2.0/UDP host, SIP/2.0/UDP other",  # one value at a time: split_list first
    ],
)
def test_malformed_vias_get_400(text: str) -> None:
    assert status_of(parse_via, text) == 400


# -- CSeq --------------------------------------------------------------------------------------


def test_cseq() -> None:
    assert parse_cseq("4711 INVITE") == CSeq(4711, "INVITE")  # RFC 3261 s20.16
    assert parse_cseq("  0009   INVITE ") == CSeq(9, "INVITE")  # RFC 4475 wsinv, unfolded
    assert parse_cseq(f"{2**31 - 1} BYE").seq == 2**31 - 1
    assert str(parse_cseq("4711 INVITE")) == "4711 INVITE"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "INVITE",
        "4711",
        "4711INVITE",
        "-1 INVITE",
        "x INVITE",
        "1 INV ITE",
        "1 INVITE;x",
        f"{2**31} INVITE",  # RFC 3261 s8.1.1.5: less than 2**31
        "36893488147419103232 REGISTER",  # RFC 4475 s3.1.2.4
    ],
)
def test_malformed_cseq_gets_400(text: str) -> None:
    assert status_of(parse_cseq, text) == 400


@pytest.mark.parametrize(
    ("parse", "text"),
    [(parse_cseq, "\u0663 INVITE"), (parse_via, "SIP/2.0/UDP host:\u0665\u0660\u0666\u0660")],
)
def test_non_ascii_digits_get_400(parse: object, text: str) -> None:
    assert status_of(parse, text) == 400


# -- fuzz: only "parses" or "raises SipProtocolError" ---------------------------------------

# Non-decimal digits ('²', '①') crash parse_uri's port: pinned in test_uri.py, kept out here.
TEXT = st.characters(codec="utf-8").filter(lambda c: c.isdecimal() or not c.isdigit())
HEADER_ALPHABET = st.sampled_from(
    list('<>"\\;,:=@ \t*sipSIP/2.0UDPTCP tag branch z9hG4bK.0123456789%[]?&\u0663é\x00')
)
FUZZ_TEXT = st.one_of(
    st.text(TEXT),
    st.text(HEADER_ALPHABET),
    st.tuples(
        st.sampled_from(['"', "<sip:", "sip:", "SIP/2.0/UDP ", "1 ", "A <sip:a@b>;"]),
        st.text(HEADER_ALPHABET),
    ).map("".join),
)


def only_parses_or_refuses(parse: object, text: str) -> object:
    assert callable(parse)
    try:
        return parse(text)
    except SipProtocolError as err:
        assert err.status == 400
        return None


@FUZZ
@given(FUZZ_TEXT)
def test_parse_address_only_parses_or_refuses(text: str) -> None:
    address = only_parses_or_refuses(parse_address, text)
    if isinstance(address, Address):
        name = address.display_name
        if name is None or name == name.strip():  # else test_display_name_with_outer_spaces...
            assert parse_address(str(address)) == address


@FUZZ
@given(FUZZ_TEXT)
def test_parse_via_only_parses_or_refuses(text: str) -> None:
    via = only_parses_or_refuses(parse_via, text)
    if isinstance(via, Via):
        assert parse_via(str(via)) == via


@FUZZ
@given(FUZZ_TEXT)
def test_other_header_parsers_only_parse_or_refuse(text: str) -> None:
    cseq = only_parses_or_refuses(parse_cseq, text)
    if isinstance(cseq, CSeq):
        assert parse_cseq(str(cseq)) == cseq
    only_parses_or_refuses(parse_params, text)
    only_parses_or_refuses(lambda v: list(split_list(v)), text)


@pytest.mark.parametrize(
    "value",
    [
        "service <sip:service@127.0.0.1:5060>",
        "<sip:service@127.0.0.1:5060>",
        '"Bob \\"B\\"" <sip:bob@biloxi.example.com;transport=udp>',
        "Bob <sip:bob@biloxi.example.com>;x=1",  # header parameters: not kept
        "sip:bob@biloxi.example.com",  # addr-spec: not kept
        "sip:bob@biloxi.example.com;x=1",
        "<tel:+15551234567>",
        "*",
    ],
)
def test_a_tagged_to_kept_is_what_its_text_parses_to(value: str) -> None:
    """Our To with our tag, kept (when plain) for the text our responses echo it as: a later
    parse of that text finds what parsing it anew gives."""
    address = parse_address(value)
    tagged = tagged_address(value, address, "a1b2c3")
    assert tagged == address.with_tag("a1b2c3")
    text = f"{value};tag=a1b2c3"
    kept = sipheaders._ADDRESSES.get(text)
    assert kept is None or kept is tagged
    if value.endswith(">") and not address.params:
        assert kept is tagged
    sipheaders._ADDRESSES.pop(text, None)
    try:
        fresh: object = sipheaders._parse_address(text)
    except SipProtocolError as err:
        fresh = err.detail
    assert kept is None or fresh == kept
