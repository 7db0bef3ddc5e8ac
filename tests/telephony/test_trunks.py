"""SIP trunks: validation, inbound conflicts, updates, list filters, pagination, legacy views.

Behaviour from SIP-BEHAVIOUR.md s2 (matching and create/update validation) and s7 (ids, lists,
updates).
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit.protocol import sip
from livekit.protocol.models import ListUpdate, Pagination

from sipbridge.errors import ApiError
from sipbridge.telephony.trunks import (
    MAX_CALL_DURATION_S,
    MAX_LIST_ITEMS,
    MAX_MEDIA_TIMEOUT_S,
    MAX_METADATA,
    MAX_NAME,
    MAX_RINGING_TIMEOUT_S,
    apply_inbound_update,
    apply_media_update,
    apply_outbound_update,
    find_inbound_conflict,
    inbound_as_legacy,
    inbound_matches_filter,
    outbound_as_legacy,
    outbound_matches_filter,
    paginate,
    upgrade_media,
    validate_address_mask,
    validate_duration,
    validate_hostport,
    validate_inbound_trunk,
    validate_items,
    validate_media,
    validate_numbers,
    validate_outbound_trunk,
    validate_text,
)

quick = settings(database=None, max_examples=200)

ENC = sip.SIPMediaEncryption
DISABLE = ENC.SIP_MEDIA_ENCRYPT_DISABLE
ALLOW = ENC.SIP_MEDIA_ENCRYPT_ALLOW
REQUIRE = ENC.SIP_MEDIA_ENCRYPT_REQUIRE


def inbound(**kw: Any) -> sip.SIPInboundTrunkInfo:
    return sip.SIPInboundTrunkInfo(**kw)


def outbound(**kw: Any) -> sip.SIPOutboundTrunkInfo:
    base: dict[str, Any] = {"address": "sip.example.com", "numbers": ["+15105550100"]}
    return sip.SIPOutboundTrunkInfo(**(base | kw))


def invalid(fn: Any, *args: Any, **kwargs: Any) -> str:
    """Call `fn`; it must raise invalid_argument. Returns the message."""
    with pytest.raises(ApiError) as info:
        fn(*args, **kwargs)
    assert info.value.code == "invalid_argument", info.value
    return info.value.message


def kw(field: str, value: Any) -> dict[str, Any]:
    """One keyword argument chosen by a parameter."""
    return {field: value}


def codec(name: str) -> sip.SIPCodec:
    return sip.SIPCodec(name=name)


# -- small validators ------------------------------------------------------------------------------


def test_validate_text_limit_is_inclusive() -> None:
    validate_text("x" * 10, "f", 10)
    assert invalid(validate_text, "x" * 11, "f", 10) == "f: too long (max 10 characters)"


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ([""], "f[0]: must not be empty"),
        (["a", "  "], "f[1]: must not be empty"),
        (["a", "x" * (MAX_NAME + 1)], "f[1]: too long"),
        (["a"] * (MAX_LIST_ITEMS + 1), f"f: too many items (max {MAX_LIST_ITEMS})"),
    ],
)
def test_validate_items_refuses(values: list[str], fragment: str) -> None:
    assert fragment in invalid(validate_items, values, "f")


def test_validate_items_accepts_limits() -> None:
    validate_items([], "f")
    validate_items(["x" * MAX_NAME] * MAX_LIST_ITEMS, "f")


@pytest.mark.parametrize(
    "number",
    ["+15105550100", "15105550100", "+1 (510) 555-0100", "1.510.555.0100", "alice", "100", "*99"],
)
def test_validate_numbers_accepts_numbers_and_sip_users(number: str) -> None:
    validate_numbers([number], "trunk.numbers")


@pytest.mark.parametrize(
    "number",
    [
        "sip:+15105550100@example.com",
        "alice@example.com",
        "+15105550100;user=phone",
        "<+15105550100>",
        '"alice"',
        "alice bob",  # not a number, so the space stays
        "a\tb",
        "a\r\nVia: x",
        "host:5060",
    ],
)
def test_validate_numbers_refuses_uris_and_spaces(number: str) -> None:
    message = invalid(validate_numbers, ["+1", number], "trunk.numbers")
    assert message.startswith("trunk.numbers[1]: ")
    assert "is not a phone number or SIP user" in message


@pytest.mark.parametrize(
    "mask",
    [
        "192.0.2.10",
        "192.0.2.0/24",
        "192.0.2.10/24",  # host bits set: accepted (strict=False)
        "10.0.0.0/8",
        "2001:db8::1",
        "[2001:db8::1]",
        "2001:db8::/32",
        "[2001:db8::]/32",  # a bracketed IPv6 CIDR
        "[2001:db8::1]/128",
        "sip.example.com",
        "carrier-1.example",
        "h",
        "bad_host",  # underscores occur in real host names
        "my_pbx.local",
        "_sip.example",
    ],
)
def test_valid_address_masks(mask: str) -> None:
    validate_address_mask(mask, "trunk.allowed_addresses[0]")


@pytest.mark.parametrize(
    ("mask", "fragment"),
    [
        ("192.0.2.0/33", "is not a valid CIDR"),
        ("2001:db8::/129", "is not a valid CIDR"),
        ("example.com/24", "is not a valid CIDR"),
        ("192.0.2.0/", "is not a valid CIDR"),
        ("-bad.example", "is not an IP, CIDR or host name"),
        ("[2001:db8::]/129", "is not a valid CIDR"),
        ("[bad_host]/24", "is not a valid CIDR"),
        ("bad host!", "is not an IP, CIDR or host name"),
        ("host!", "is not an IP, CIDR or host name"),
        ("a@carrier.example", "is not an IP, CIDR or host name"),
        ("carrier.example;x", "is not an IP, CIDR or host name"),
        ("sip:carrier.example", "is not an IP, CIDR or host name"),
        ("host name", "is not an IP, CIDR or host name"),
        ("", "is not an IP, CIDR or host name"),
    ],
)
def test_invalid_address_masks(mask: str, fragment: str) -> None:
    message = invalid(validate_address_mask, mask, "trunk.allowed_addresses[3]")
    assert message.startswith("trunk.allowed_addresses[3]: ")
    assert fragment in message


@pytest.mark.parametrize(
    "value",
    [
        "sip.example.com",
        "sip.example.com:5061",
        "192.0.2.10",
        "192.0.2.10:5060",
        "[2001:db8::1]",
        "[2001:db8::1]:5060",
        "h",
        "h:1",
        "h:65535",
        "2001:db8::1",  # a bare IPv6 address
        "::1",
        "my_pbx.local",  # underscores occur in real host names
        "my_pbx.local:5060",
        "bad_host",
        "_sip.example",
    ],
)
def test_valid_hostports(value: str) -> None:
    validate_hostport(value, "trunk.address", required=True)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("sip:carrier.example", "not a SIP URI"),
        ("sips:carrier.example", "not a SIP URI"),
        ("user@carrier.example", "not a SIP URI"),
        ("carrier.example;transport=tcp", "not a SIP URI"),
        ("carrier.example:", "is not a valid host[:port]"),
        ("carrier.example:123456", "is not a valid host[:port]"),
        ("bad host", "is not a valid host[:port]"),
        ("bad!host", "is not a valid host[:port]"),
        ("my_pbx.local:", "is not a valid host[:port]"),
        ("my_pbx.local:x", "is not a valid host[:port]"),
        ("[2001:db8::1]:", "is not a valid host[:port]"),
        ("sip:my_pbx.local", "not a SIP URI"),
        ("-carrier.example", "is not a valid host[:port]"),
        ("carrier .example", "is not a valid host[:port]"),
        ("carrier.example:0", "port out of range"),
        ("carrier.example:65536", "port out of range"),
        ("carrier.example:99999", "port out of range"),
        ("[2001:db8::1]:0", "port out of range"),
    ],
)
def test_invalid_hostports(value: str, fragment: str) -> None:
    message = invalid(validate_hostport, value, "trunk.address", required=False)
    assert message.startswith("trunk.address: ")
    assert fragment in message


def test_hostport_required_only_when_asked() -> None:
    validate_hostport("", "trunk.from_host", required=False)
    assert invalid(validate_hostport, "", "trunk.address", required=True) == (
        "trunk.address: must be set"
    )


def test_hostport_with_trailing_newline_is_refused() -> None:
    invalid(validate_hostport, "sip.example.com\n", "trunk.address", required=True)


def test_address_mask_with_trailing_newline_is_refused() -> None:
    invalid(validate_address_mask, "carrier.example\n", "trunk.allowed_addresses[0]")


@pytest.mark.parametrize(
    ("duration", "ok"),
    [
        (Duration(), True),
        (Duration(seconds=10, nanos=500), True),
        (Duration(seconds=60), True),
        (Duration(seconds=61), False),
        (Duration(seconds=-1), False),
        (Duration(nanos=-1), False),
    ],
)
def test_validate_duration(duration: Duration, ok: bool) -> None:
    if ok:
        validate_duration(duration, "f", 60)
    else:
        assert invalid(validate_duration, duration, "f", 60).startswith("f: must not ")


@pytest.mark.parametrize(
    ("media", "fragment"),
    [
        (sip.SIPMediaConfig(codecs=[codec("PCMU"), codec("")]), "m.codecs[1].name: ''"),
        (sip.SIPMediaConfig(codecs=[codec("opus/48000")]), "m.codecs[0].name: 'opus/48000'"),
        (sip.SIPMediaConfig(codecs=[codec("PC MU")]), "m.codecs[0].name"),
        (
            sip.SIPMediaConfig(media_timeout=Duration(seconds=MAX_MEDIA_TIMEOUT_S + 1)),
            "m.media_timeout: must not exceed",
        ),
        (sip.SIPMediaConfig(media_timeout=Duration(seconds=-5)), "m.media_timeout: must not be"),
    ],
)
def test_validate_media_refuses(media: sip.SIPMediaConfig, fragment: str) -> None:
    assert fragment in invalid(validate_media, media, "m")


def test_validate_media_accepts() -> None:
    validate_media(sip.SIPMediaConfig(), "m")
    validate_media(
        sip.SIPMediaConfig(
            codecs=[codec("PCMU"), codec("PCMA"), codec("G722"), codec("telephone-event")],
            only_listed_codecs=True,
            media_timeout=Duration(seconds=MAX_MEDIA_TIMEOUT_S),
            encryption=REQUIRE,
        ),
        "m",
    )


def test_media_timeout_is_capped_at_ten_minutes() -> None:
    # As LiveKit: at most 600 s (it was 3600).
    assert MAX_MEDIA_TIMEOUT_S == 600
    validate_media(sip.SIPMediaConfig(media_timeout=Duration(seconds=600)), "m")
    for seconds in (601, 3600):
        message = invalid(
            validate_media, sip.SIPMediaConfig(media_timeout=Duration(seconds=seconds)), "m"
        )
        assert message == "m.media_timeout: must not exceed 600 s"
    message = invalid(
        validate_inbound_trunk,
        inbound(numbers=["+1"], media=sip.SIPMediaConfig(media_timeout=Duration(seconds=601))),
    )
    assert message == "trunk.media.media_timeout: must not exceed 600 s"


def test_codec_name_with_trailing_newline_is_refused() -> None:
    invalid(validate_media, sip.SIPMediaConfig(codecs=[codec("PCMU\n")]), "m")


# -- legacy media_encryption ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, DISABLE),
        ({"media_encryption": REQUIRE}, REQUIRE),
        ({"media": sip.SIPMediaConfig(encryption=ALLOW)}, ALLOW),
        # an explicit media.encryption wins over the legacy field, even when it is DISABLE (0)
        ({"media_encryption": REQUIRE, "media": sip.SIPMediaConfig(encryption=DISABLE)}, DISABLE),
        ({"media_encryption": ALLOW, "media": sip.SIPMediaConfig(encryption=REQUIRE)}, REQUIRE),
        ({"media_encryption": ALLOW, "media": sip.SIPMediaConfig(only_listed_codecs=True)}, ALLOW),
    ],
)
@pytest.mark.parametrize("cls", [sip.SIPInboundTrunkInfo, sip.SIPOutboundTrunkInfo])
def test_upgrade_media_keeps_both_fields_in_step(
    cls: type[sip.SIPInboundTrunkInfo], kwargs: dict[str, Any], expected: int
) -> None:
    info = cls(**kwargs)
    upgrade_media(info)
    assert info.HasField("media")
    assert info.media_encryption == expected
    assert info.media.encryption == expected
    upgrade_media(info)  # idempotent
    assert info.media_encryption == info.media.encryption == expected


def test_upgrade_media_keeps_other_media_settings() -> None:
    info = inbound(media=sip.SIPMediaConfig(codecs=[codec("PCMU")], only_listed_codecs=True))
    upgrade_media(info)
    assert [c.name for c in info.media.codecs] == ["PCMU"]
    assert info.media.only_listed_codecs


# -- inbound trunk validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"numbers": ["+15105550100"]},
        {"auth_username": "user", "auth_password": "pass"},
        {"allowed_addresses": ["192.0.2.0/24"]},
        {
            "name": "Carrier",
            "metadata": "m" * MAX_METADATA,
            "numbers": ["+15105550100", "1 510 555 0101"],
            "allowed_numbers": ["+15105550199"],
            "allowed_addresses": ["192.0.2.10", "carrier.example"],
            "auth_username": "u",
            "auth_password": "p",
            "auth_realm": "sip.example.com",
            "headers": {"X-Hello": "world"},
            "headers_to_attributes": {"X-Customer": "customer.id", "To": "sip.to"},
            "attributes_to_headers": {"customer.id": "X-Customer"},
            "include_headers": sip.SIPHeaderOptions.SIP_X_HEADERS,
            "ringing_timeout": Duration(seconds=MAX_RINGING_TIMEOUT_S),
            "ringing_timeout_status": sip.SIPStatusCode.SIP_STATUS_BUSY_HERE,
            "max_call_duration": Duration(seconds=MAX_CALL_DURATION_S),
            "krisp_enabled": True,
            "media": sip.SIPMediaConfig(codecs=[codec("PCMU")]),
        },
        {"numbers": ["+1"], "ringing_timeout_status": 400},
        {"numbers": ["+1"], "ringing_timeout_status": 699},
    ],
)
def test_valid_inbound_trunks(kwargs: dict[str, Any]) -> None:
    validate_inbound_trunk(inbound(**kwargs))


NUMBER = {"numbers": ["+15105550100"]}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({**NUMBER, "name": "x" * (MAX_NAME + 1)}, "trunk.name: too long"),
        ({**NUMBER, "metadata": "x" * (MAX_METADATA + 1)}, "trunk.metadata: too long"),
        ({"numbers": ["+1", ""]}, "trunk.numbers[1]: must not be empty"),
        ({"numbers": ["sip:+1@example.com"]}, "trunk.numbers[0]: "),
        ({"numbers": ["+1"] * (MAX_LIST_ITEMS + 1)}, "trunk.numbers: too many items"),
        ({**NUMBER, "allowed_numbers": ["a@b"]}, "trunk.allowed_numbers[0]: "),
        ({**NUMBER, "allowed_numbers": [" "]}, "trunk.allowed_numbers[0]: must not be empty"),
        ({"allowed_addresses": [""]}, "trunk.allowed_addresses[0]: must not be empty"),
        ({"allowed_addresses": ["10.0.0.0/8", "10.0.0.0/40"]}, "trunk.allowed_addresses[1]: "),
        ({"allowed_addresses": ["not valid!"]}, "trunk.allowed_addresses[0]: "),
        ({"allowed_addresses": ["ok_host", "x y"]}, "trunk.allowed_addresses[1]: "),
        ({**NUMBER, "auth_username": "u"}, "must be set together"),
        ({**NUMBER, "auth_password": "p"}, "must be set together"),
        ({}, "one of the fields must be set"),
        ({"allowed_numbers": ["+15105550199"]}, "one of the fields must be set"),
        ({"name": "only a name"}, "one of the fields must be set"),
        ({**NUMBER, "auth_realm": "x" * (MAX_NAME + 1)}, "trunk.auth_realm: too long"),
        ({**NUMBER, "auth_realm": 'a"b'}, "trunk.auth_realm: "),
        ({**NUMBER, "auth_realm": "a\\b"}, "trunk.auth_realm: "),
        ({**NUMBER, "auth_realm": "a\r\nb"}, "trunk.auth_realm: "),
        ({**NUMBER, "headers": {"Call-ID": "x"}}, "trunk.headers: "),
        ({**NUMBER, "headers": {"X-A": "a\nb"}}, "trunk.headers: "),
        ({**NUMBER, "headers_to_attributes": {"X-A": ""}}, "trunk.headers_to_attributes: "),
        ({**NUMBER, "headers_to_attributes": {"X A": "a"}}, "trunk.headers_to_attributes: "),
        ({**NUMBER, "attributes_to_headers": {"a": "Via"}}, "trunk.attributes_to_headers: "),
        ({**NUMBER, "attributes_to_headers": {"": "X-A"}}, "trunk.attributes_to_headers: "),
        ({**NUMBER, "ringing_timeout_status": 200}, "trunk.ringing_timeout_status: "),
        ({**NUMBER, "ringing_timeout_status": 399}, "trunk.ringing_timeout_status: "),
        ({**NUMBER, "ringing_timeout_status": 700}, "trunk.ringing_timeout_status: "),
        ({**NUMBER, "ringing_timeout": Duration(seconds=-1)}, "trunk.ringing_timeout: "),
        (
            {**NUMBER, "ringing_timeout": Duration(seconds=MAX_RINGING_TIMEOUT_S + 1)},
            "trunk.ringing_timeout: must not exceed",
        ),
        (
            {**NUMBER, "max_call_duration": Duration(seconds=MAX_CALL_DURATION_S + 1)},
            "trunk.max_call_duration: must not exceed",
        ),
        (
            {**NUMBER, "media": sip.SIPMediaConfig(codecs=[codec("")])},
            "trunk.media.codecs[0].name",
        ),
        (
            {**NUMBER, "media": sip.SIPMediaConfig(media_timeout=Duration(seconds=-1))},
            "trunk.media.media_timeout",
        ),
    ],
)
def test_invalid_inbound_trunks(kwargs: dict[str, Any], fragment: str) -> None:
    assert fragment in invalid(validate_inbound_trunk, inbound(**kwargs))


# -- outbound trunk validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"address": "192.0.2.10:5061", "transport": sip.SIPTransport.SIP_TRANSPORT_TLS},
        {"address": "[2001:db8::1]", "from_host": "pbx.example.com"},
        {"address": "2001:db8::1"},  # a bare IPv6 address
        {"address": "[2001:db8::1]:5061"},
        {"address": "my_pbx.local", "from_host": "my_pbx.local"},
        {"address": "bad_host:5060", "from_host": "from_host.example:5070"},
        {
            "name": "Carrier out",
            "metadata": "x" * MAX_METADATA,
            "numbers": ["+15105550100", "+15105550101"],
            "auth_username": "u",
            "auth_password": "p",
            "destination_country": "US",
            "headers": {"X-Hello": "world"},
            "headers_to_attributes": {"X-Customer": "customer.id"},
            "attributes_to_headers": {"customer.id": "X-Customer"},
            "include_headers": sip.SIPHeaderOptions.SIP_ALL_HEADERS,
            "media": sip.SIPMediaConfig(codecs=[codec("PCMA")]),
        },
    ],
)
def test_valid_outbound_trunks(kwargs: dict[str, Any]) -> None:
    validate_outbound_trunk(outbound(**kwargs))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"name": "x" * (MAX_NAME + 1)}, "trunk.name: too long"),
        ({"metadata": "x" * (MAX_METADATA + 1)}, "trunk.metadata: too long"),
        ({"numbers": []}, "trunk.numbers: at least one number is required"),
        ({"numbers": ["+1", "a@b"]}, "trunk.numbers[1]: "),
        ({"numbers": [""]}, "trunk.numbers[0]: must not be empty"),
        ({"address": ""}, "trunk.address: must be set"),
        ({"address": "sip:carrier.example"}, "trunk.address: must be a host name or IP"),
        ({"address": "carrier.example:70000"}, "trunk.address: port out of range"),
        ({"address": "bad host"}, "trunk.address: 'bad host' is not a valid host[:port]"),
        ({"address": "bad!host"}, "trunk.address: "),
        ({"address": "u@carrier.example"}, "trunk.address: must be a host name or IP"),
        ({"address": "carrier.example;transport=tcp"}, "trunk.address: must be a host name"),
        ({"address": "my_pbx.local:0"}, "trunk.address: port out of range"),
        ({"from_host": "my pbx"}, "trunk.from_host: "),
        ({"from_host": "sip:pbx.example.com"}, "trunk.from_host: "),
        ({"from_host": "pbx.example.com:0"}, "trunk.from_host: port out of range"),
        ({"auth_username": "u"}, "must be set together"),
        ({"auth_password": "p"}, "must be set together"),
        ({"headers": {"From": "x"}}, "trunk.headers: "),
        ({"headers_to_attributes": {"X-A": ""}}, "trunk.headers_to_attributes: "),
        ({"attributes_to_headers": {"a": "CSeq"}}, "trunk.attributes_to_headers: "),
        ({"media": sip.SIPMediaConfig(codecs=[codec("a b")])}, "trunk.media.codecs[0].name"),
    ],
)
def test_invalid_outbound_trunks(kwargs: dict[str, Any], fragment: str) -> None:
    assert fragment in invalid(validate_outbound_trunk, outbound(**kwargs))


# -- inbound conflicts (SIP-BEHAVIOUR.md s2) ------------------------------------------------------


def stored(trunk_id: str, **kw: Any) -> sip.SIPInboundTrunkInfo:
    return inbound(sip_trunk_id=trunk_id, **kw)


@pytest.mark.parametrize(
    ("new", "existing", "conflict"),
    [
        # same number, no caller filter on either side
        ({"numbers": ["+15105550100"]}, {"numbers": ["+15105550100"]}, True),
        # same number written differently
        ({"numbers": ["+1 (510) 555-0100"]}, {"numbers": ["15105550100"]}, True),
        # one common number among several
        ({"numbers": ["+1", "+2"]}, {"numbers": ["+3", "+2"]}, True),
        ({"numbers": ["+1"]}, {"numbers": ["+2"]}, False),
        # both wildcard trunks (no numbers)
        ({"allowed_addresses": ["192.0.2.1"]}, {"allowed_addresses": ["198.51.100.1"]}, True),
        # a trunk listing the number beats a wildcard trunk: no conflict
        ({"numbers": ["+1"]}, {"allowed_addresses": ["192.0.2.1"]}, False),
        ({"allowed_addresses": ["192.0.2.1"]}, {"numbers": ["+1"]}, False),
        # caller filters
        (
            {"numbers": ["+1"], "allowed_numbers": ["+100"]},
            {"numbers": ["+1"], "allowed_numbers": ["+200"]},
            False,
        ),
        (
            {"numbers": ["+1"], "allowed_numbers": ["+100", "+300"]},
            {"numbers": ["+1"], "allowed_numbers": ["+200", "300"]},
            True,
        ),
        ({"numbers": ["+1"], "allowed_numbers": ["+100"]}, {"numbers": ["+1"]}, False),
        ({"numbers": ["+1"]}, {"numbers": ["+1"], "allowed_numbers": ["+100"]}, False),
        # different allowed_addresses do not separate trunks
        (
            {"numbers": ["+1"], "allowed_addresses": ["192.0.2.1"]},
            {"numbers": ["+1"], "allowed_addresses": ["198.51.100.1"]},
            True,
        ),
        # auth does not separate trunks either
        (
            {"numbers": ["+1"], "auth_username": "a", "auth_password": "a"},
            {"numbers": ["+1"], "auth_username": "b", "auth_password": "b"},
            True,
        ),
    ],
)
def test_find_inbound_conflict(
    new: dict[str, Any], existing: dict[str, Any], conflict: bool
) -> None:
    message = find_inbound_conflict(inbound(**new), [stored("ST_existing", **existing)])
    assert (message is not None) is conflict, message
    if conflict:
        assert message is not None
        assert "ST_existing" in message
        assert message.startswith("conflicting inbound SIP trunks: this trunk and ST_existing")
    # the relation is symmetric
    reverse = find_inbound_conflict(inbound(**existing), [stored("ST_new", **new)])
    assert (reverse is not None) is conflict


def test_conflict_message_names_numbers_and_reason() -> None:
    message = find_inbound_conflict(
        stored("ST_b", numbers=["+2", "1"]), [stored("ST_a", numbers=["+1", "+2"])]
    )
    assert message == (
        "conflicting inbound SIP trunks: ST_b and ST_a use the same number(s) +1, +2 "
        "without allowed_numbers set"
    )
    message = find_inbound_conflict(
        inbound(numbers=["+1"], allowed_numbers=["+300", "+100"]),
        [stored("ST_a", numbers=["+1"], allowed_numbers=["100", "300", "+400"])],
    )
    assert message is not None
    assert message.endswith("use the same number(s) +1 and allowed number +100, +300")


def test_conflict_between_wildcard_trunks_names_any() -> None:
    message = find_inbound_conflict(
        inbound(allowed_addresses=["192.0.2.1"]), [stored("ST_a", allowed_addresses=["10.0.0.1"])]
    )
    assert message is not None
    assert "<any>" in message


def test_a_trunk_does_not_conflict_with_itself() -> None:
    trunk = stored("ST_a", numbers=["+1"])
    assert find_inbound_conflict(trunk, [trunk]) is None
    # an update of ST_a is checked against the stored ST_a: still no conflict
    updated = stored("ST_a", numbers=["+1", "+2"])
    assert find_inbound_conflict(updated, [trunk, stored("ST_b", numbers=["+3"])]) is None
    assert find_inbound_conflict(updated, [trunk, stored("ST_b", numbers=["+2"])]) is not None


def test_no_others_no_conflict() -> None:
    assert find_inbound_conflict(inbound(numbers=["+1"]), []) is None


def test_first_conflicting_trunk_is_reported() -> None:
    others = [
        stored("ST_a", numbers=["+9"]),
        stored("ST_b", numbers=["+1"]),
        stored("ST_c", numbers=["+1"]),
    ]
    message = find_inbound_conflict(inbound(numbers=["+1"]), iter(others))
    assert message is not None
    assert "ST_b" in message
    assert "ST_c" not in message


# -- updates --------------------------------------------------------------------------------------


def full_inbound() -> sip.SIPInboundTrunkInfo:
    return stored(
        "ST_in",
        name="in",
        metadata="meta",
        numbers=["+1", "+2"],
        allowed_addresses=["192.0.2.1"],
        allowed_numbers=["+100"],
        auth_username="u",
        auth_password="p",
        auth_realm="realm",
        headers={"X-A": "1"},
        krisp_enabled=True,
    )


def test_apply_inbound_update_changes_only_given_fields() -> None:
    before = full_inbound()
    snapshot = sip.SIPInboundTrunkInfo()
    snapshot.CopyFrom(before)
    result = apply_inbound_update(
        before,
        sip.SIPInboundTrunkUpdate(
            numbers=ListUpdate(add=["+3"], remove=["+1"]),
            allowed_addresses=ListUpdate(set=["198.51.100.0/24"]),
            allowed_numbers=ListUpdate(clear=True),
            name="renamed",
        ),
    )
    assert before == snapshot, "the stored trunk must not be modified"
    assert result is not before
    assert result.sip_trunk_id == "ST_in"
    assert list(result.numbers) == ["+2", "+3"]
    assert list(result.allowed_addresses) == ["198.51.100.0/24"]
    assert list(result.allowed_numbers) == []
    assert result.name == "renamed"
    assert result.metadata == "meta"
    assert (result.auth_username, result.auth_password, result.auth_realm) == ("u", "p", "realm")
    assert dict(result.headers) == {"X-A": "1"}
    assert result.krisp_enabled


@pytest.mark.parametrize(
    "field", ["auth_username", "auth_password", "auth_realm", "name", "metadata"]
)
def test_apply_inbound_update_scalars_can_be_set_and_cleared(field: str) -> None:
    result = apply_inbound_update(full_inbound(), sip.SIPInboundTrunkUpdate(**kw(field, "new")))
    assert getattr(result, field) == "new"
    # present but empty clears the value (optional field presence)
    result = apply_inbound_update(full_inbound(), sip.SIPInboundTrunkUpdate(**kw(field, "")))
    assert getattr(result, field) == ""


def test_empty_inbound_update_changes_nothing_but_media_defaults() -> None:
    before = full_inbound()
    result = apply_inbound_update(before, sip.SIPInboundTrunkUpdate())
    upgrade_media(before)
    assert result == before


@pytest.mark.parametrize("field", ["numbers", "allowed_addresses", "allowed_numbers"])
@pytest.mark.parametrize(
    "update", [ListUpdate(), ListUpdate(clear=True, add=["x"]), ListUpdate(add=[""])]
)
def test_apply_inbound_update_refuses_bad_list_updates(field: str, update: ListUpdate) -> None:
    message = invalid(
        apply_inbound_update, full_inbound(), sip.SIPInboundTrunkUpdate(**kw(field, update))
    )
    assert message.startswith(f"update.{field}: ")


def test_apply_inbound_update_media() -> None:
    before = full_inbound()
    result = apply_inbound_update(before, sip.SIPInboundTrunkUpdate(media_encryption=REQUIRE))
    assert result.media_encryption == REQUIRE
    assert result.media.encryption == REQUIRE
    assert not before.HasField("media")

    result = apply_inbound_update(
        result,
        sip.SIPInboundTrunkUpdate(media=sip.SIPMediaConfig(codecs=[codec("PCMU")])),
    )
    # new media replaces the old; encryption is kept through the legacy field
    assert [c.name for c in result.media.codecs] == ["PCMU"]
    assert result.media_encryption == result.media.encryption == REQUIRE

    result = apply_inbound_update(
        result, sip.SIPInboundTrunkUpdate(media=sip.SIPMediaConfig(encryption=ALLOW))
    )
    assert list(result.media.codecs) == []
    assert result.media_encryption == result.media.encryption == ALLOW


def test_media_encryption_update_wins_over_media_update() -> None:
    result = apply_inbound_update(
        full_inbound(),
        sip.SIPInboundTrunkUpdate(
            media=sip.SIPMediaConfig(encryption=ALLOW, codecs=[codec("G722")]),
            media_encryption=REQUIRE,
        ),
    )
    assert result.media_encryption == result.media.encryption == REQUIRE
    assert [c.name for c in result.media.codecs] == ["G722"]


def full_outbound() -> sip.SIPOutboundTrunkInfo:
    return outbound(
        sip_trunk_id="ST_out",
        name="out",
        metadata="meta",
        numbers=["+1"],
        auth_username="u",
        auth_password="p",
        destination_country="US",
        transport=sip.SIPTransport.SIP_TRANSPORT_UDP,
        from_host="pbx.example.com",
        headers={"X-A": "1"},
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("address", "other.example.com:5061"),
        ("transport", sip.SIPTransport.SIP_TRANSPORT_TLS),
        ("transport", sip.SIPTransport.SIP_TRANSPORT_AUTO),
        ("destination_country", "DE"),
        ("destination_country", ""),
        ("auth_username", "u2"),
        ("auth_password", ""),
        ("name", "renamed"),
        ("metadata", ""),
        ("from_host", "other.example.com"),
        ("from_host", ""),
    ],
)
def test_apply_outbound_update_scalars(field: str, value: Any) -> None:
    before = full_outbound()
    snapshot = sip.SIPOutboundTrunkInfo()
    snapshot.CopyFrom(before)
    result = apply_outbound_update(before, sip.SIPOutboundTrunkUpdate(**{field: value}))
    assert before == snapshot
    assert getattr(result, field) == value
    # every other field is as it was
    for other in ("address", "transport", "destination_country", "name", "from_host", "numbers"):
        if other != field:
            assert getattr(result, other) == getattr(before, other)
    assert dict(result.headers) == {"X-A": "1"}


def test_apply_outbound_update_numbers() -> None:
    result = apply_outbound_update(
        full_outbound(), sip.SIPOutboundTrunkUpdate(numbers=ListUpdate(add=["+2", "+1"]))
    )
    assert list(result.numbers) == ["+1", "+2"]
    result = apply_outbound_update(
        result, sip.SIPOutboundTrunkUpdate(numbers=ListUpdate(clear=True))
    )
    assert list(result.numbers) == []
    message = invalid(
        apply_outbound_update,
        full_outbound(),
        sip.SIPOutboundTrunkUpdate(numbers=ListUpdate(set=["+1"], remove=["+2"])),
    )
    assert message.startswith("update.numbers: ")


def test_apply_outbound_update_media() -> None:
    result = apply_outbound_update(
        full_outbound(), sip.SIPOutboundTrunkUpdate(media_encryption=ALLOW)
    )
    assert result.media_encryption == result.media.encryption == ALLOW
    result = apply_outbound_update(
        result, sip.SIPOutboundTrunkUpdate(media=sip.SIPMediaConfig(encryption=DISABLE))
    )
    assert result.media_encryption == result.media.encryption == DISABLE


def test_apply_media_update_on_a_dispatch_rule() -> None:
    rule = sip.SIPDispatchRuleInfo(media_encryption=REQUIRE)
    apply_media_update(rule, sip.SIPDispatchRuleUpdate())
    assert rule.media.encryption == REQUIRE


# -- list filters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trunk_numbers", "filter_numbers", "included"),
    [
        (["+1"], [], True),
        ([], [], True),
        ([], ["+1"], True),  # wildcard trunks are always listed
        (["+15105550100"], ["+1 510 555 0100"], True),
        (["1 510 555 0100"], ["+15105550100"], True),
        (["+1", "+2"], ["+3", "+2"], True),
        (["+1"], ["+2"], False),
        (["alice"], ["alice"], True),
        (["alice"], ["bob"], False),
    ],
)
def test_inbound_matches_filter(
    trunk_numbers: list[str], filter_numbers: list[str], included: bool
) -> None:
    assert inbound_matches_filter(inbound(numbers=trunk_numbers), filter_numbers) is included


@pytest.mark.parametrize(
    ("trunk_numbers", "filter_numbers", "included"),
    [
        (["+1"], [], True),
        ([], [], True),
        ([], ["+1"], False),  # outbound trunks have no wildcard
        (["+15105550100"], ["15105550100"], True),
        (["+1", "+2"], ["+2"], True),
        (["+1"], ["+2"], False),
    ],
)
def test_outbound_matches_filter(
    trunk_numbers: list[str], filter_numbers: list[str], included: bool
) -> None:
    trunk = sip.SIPOutboundTrunkInfo(numbers=trunk_numbers)
    assert outbound_matches_filter(trunk, filter_numbers) is included


# -- pagination -----------------------------------------------------------------------------------


def trunks(*ids: str) -> list[sip.SIPInboundTrunkInfo]:
    return [stored(i) for i in ids]


def ids_of(items: list[sip.SIPInboundTrunkInfo]) -> list[str]:
    return [t.sip_trunk_id for t in items]


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        (Pagination(), ["ST_a", "ST_b", "ST_c", "ST_d"]),
        (Pagination(limit=2), ["ST_a", "ST_b"]),
        (Pagination(limit=10), ["ST_a", "ST_b", "ST_c", "ST_d"]),
        (Pagination(after_id="ST_b"), ["ST_c", "ST_d"]),
        (Pagination(after_id="ST_b", limit=1), ["ST_c"]),
        (Pagination(after_id="ST_bb"), ["ST_c", "ST_d"]),  # need not be an existing id
        (Pagination(after_id="ST_d"), []),
        (Pagination(after_id="A"), ["ST_a", "ST_b", "ST_c", "ST_d"]),
    ],
)
def test_paginate(page: Pagination, expected: list[str]) -> None:
    assert (
        ids_of(paginate(trunks("ST_c", "ST_a", "ST_d", "ST_b"), page, "sip_trunk_id")) == expected
    )


@pytest.mark.parametrize("limit", [0, -1, -1000])
def test_paginate_limit_not_positive_means_a_page_of_1000(limit: int) -> None:
    # LiveKit: a limit of 0 or less is its default page size, never an error.
    items = trunks(*(f"ST_{i:05d}" for i in range(1203)))
    page = ids_of(paginate(items, Pagination(limit=limit), "sip_trunk_id"))
    assert page == [f"ST_{i:05d}" for i in range(1000)]
    rest = ids_of(paginate(items, Pagination(after_id=page[-1], limit=limit), "sip_trunk_id"))
    assert rest == [f"ST_{i:05d}" for i in range(1000, 1203)]
    assert ids_of(paginate(trunks("ST_b", "ST_a"), Pagination(limit=limit), "sip_trunk_id")) == [
        "ST_a",
        "ST_b",
    ]


def test_paginate_works_for_rules_and_generators() -> None:
    rules = (sip.SIPDispatchRuleInfo(sip_dispatch_rule_id=i) for i in ["SDR_2", "SDR_1"])
    page = paginate(rules, Pagination(), "sip_dispatch_rule_id")
    assert [r.sip_dispatch_rule_id for r in page] == ["SDR_1", "SDR_2"]


@quick
@given(
    st.lists(st.text(alphabet="ABCabc123_", min_size=1, max_size=6), unique=True, max_size=30),
    st.integers(min_value=1, max_value=7),
)
def test_paging_through_visits_every_item_once_in_order(ids: list[str], limit: int) -> None:
    items = trunks(*ids)
    seen: list[str] = []
    after = ""
    for _ in range(len(ids) + 2):
        page = ids_of(paginate(items, Pagination(after_id=after, limit=limit), "sip_trunk_id"))
        assert len(page) <= limit
        if not page:
            break
        seen += page
        after = page[-1]
    assert seen == sorted(ids)


# -- legacy SIPTrunkInfo --------------------------------------------------------------------------


def test_inbound_as_legacy() -> None:
    legacy = inbound_as_legacy(full_inbound())
    assert legacy == sip.SIPTrunkInfo(
        sip_trunk_id="ST_in",
        kind=sip.SIPTrunkInfo.TrunkKind.TRUNK_INBOUND,
        name="in",
        metadata="meta",
        outbound_number="+1",
        inbound_addresses=["192.0.2.1"],
        inbound_numbers=["+100"],
        inbound_username="u",
        inbound_password="p",
    )


def test_inbound_as_legacy_without_numbers() -> None:
    legacy = inbound_as_legacy(stored("ST_x", allowed_addresses=["192.0.2.1"]))
    assert legacy.outbound_number == ""
    assert legacy.kind == sip.SIPTrunkInfo.TrunkKind.TRUNK_INBOUND


def test_outbound_as_legacy() -> None:
    legacy = outbound_as_legacy(full_outbound())
    assert legacy == sip.SIPTrunkInfo(
        sip_trunk_id="ST_out",
        kind=sip.SIPTrunkInfo.TrunkKind.TRUNK_OUTBOUND,
        name="out",
        metadata="meta",
        outbound_address="sip.example.com",
        transport=sip.SIPTransport.SIP_TRANSPORT_UDP,
        outbound_number="+1",
        outbound_username="u",
        outbound_password="p",
    )


def test_outbound_as_legacy_without_numbers() -> None:
    legacy = outbound_as_legacy(sip.SIPOutboundTrunkInfo(sip_trunk_id="ST_x"))
    assert legacy.outbound_number == ""
    assert legacy.kind == sip.SIPTrunkInfo.TrunkKind.TRUNK_OUTBOUND
